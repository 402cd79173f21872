"""How the datasets report bad samples.

Every problem found in a sample (a corrupt or missing frame, layers of different lengths, an alpha
outside [0, 1]) becomes one :class:`SampleError` that names the sample and the file or layer. The
dataset's ``on_error`` option then decides: ``"raise"`` stops (the default: nothing trains on garbage
unnoticed), ``"skip"`` logs a warning, counts the sample in :class:`SkipReport` and moves on.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
ON_ERROR_CHOICES: tuple[OnError, ...] = ("raise", "skip")


class NoSamplesError(ValueError):
    """A dataset without one usable sample (an empty folder, or every sample skipped)."""


class SampleError(ValueError):
    """A sample that cannot be used, with the sample id and a reason that names the file or layer."""

    def __init__(self, sample_id: str, reason: str):
        super().__init__(f"sample {sample_id!r}: {reason}")
        self.sample_id = sample_id
        self.reason = reason


def check_on_error(on_error: str) -> OnError:
    """Validate the ``on_error`` option once, at construction time."""
    for choice in ON_ERROR_CHOICES:
        if on_error == choice:
            return choice
    raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")


@dataclass
class SkipReport:
    """The samples a dataset skipped (in this process), in order; ``len()`` is the skip count."""

    skipped: list[SampleError] = field(default_factory=list)

    def record(self, error: SampleError) -> None:
        self.skipped.append(error)
        logger.warning("skipping %s (%d skipped so far)", error, len(self.skipped))

    def __len__(self) -> int:
        return len(self.skipped)

    @property
    def sample_ids(self) -> list[str]:
        return [e.sample_id for e in self.skipped]

    def summary(self) -> str:
        """One line per distinct sample: id and reason, for logs and end-of-run reports."""
        counts = Counter(e.sample_id for e in self.skipped)
        reasons = {e.sample_id: e.reason for e in self.skipped}
        return "\n".join(f"{sid} (x{n}): {reasons[sid]}" for sid, n in counts.items())
