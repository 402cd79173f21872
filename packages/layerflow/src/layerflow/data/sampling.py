"""Which frames of a clip a sample uses, reproducibly from ``(seed, epoch, index)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

StartPolicy = Literal["random", "first", "center"]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one draw of one sample.

    Seeding from the triple (not from a running stream) makes every draw independent of worker count,
    shuffling and resumption: sample ``index`` of ``epoch`` is the same clip in every run.
    """
    return np.random.default_rng([seed, epoch, index])


@dataclass(frozen=True)
class FrameSampler:
    """Pick ``num_frames`` frame indices from a clip of ``length`` frames.

    Args:
        num_frames: frames per sample (16 per clip in LayerFlow).
        stride: step between picked frames. Ignored when ``target_fps`` is set.
        target_fps: when set, the stride is ``round(source_fps / target_fps)`` (at least 1), so clips of
            different frame rates play at about the same speed.
        start: ``"random"`` (uniform over every valid window), ``"first"`` or ``"center"``.
        start_offset: frames skipped at the beginning of every clip before the window is placed.
        official: LayerFlow's sampler instead: ``linspace(start, start + L - 1, num_frames)`` over
            ``L = min(length, num_frames - 1)`` frames, which duplicates one frame per clip; ``stride``
            and ``target_fps`` do not apply.
    """

    num_frames: int = 16
    stride: int = 1
    target_fps: float | None = None
    start: StartPolicy = "random"
    start_offset: int = 0
    official: bool = False

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.target_fps is not None and self.target_fps <= 0:
            raise ValueError(f"target_fps must be > 0, got {self.target_fps}")
        if self.start not in ("random", "first", "center"):
            raise ValueError(f"start must be 'random', 'first' or 'center', got {self.start!r}")
        if self.start_offset < 0:
            raise ValueError(f"start_offset must be >= 0, got {self.start_offset}")

    def effective_stride(self, source_fps: float) -> int:
        if self.official:
            return 1
        if self.target_fps is None:
            return self.stride
        if source_fps <= 0:
            raise ValueError(f"target_fps={self.target_fps} needs the source fps, got {source_fps}")
        return max(1, round(source_fps / self.target_fps))

    def indices(self, length: int, source_fps: float, rng: np.random.Generator) -> np.ndarray:
        """Frame indices into a clip of ``length`` frames; raises ``ValueError`` if the clip is too short."""
        usable = length - self.start_offset
        if self.official:
            window = min(usable, max(1, self.num_frames - 1))
            if window < 1:
                raise ValueError(f"clip has {length} frames, start_offset {self.start_offset} leaves none")
            first = self._window_start(usable - window, rng)
            picked = np.linspace(first, first + window - 1, self.num_frames).astype(np.int64)
            return picked + self.start_offset
        stride = self.effective_stride(source_fps)
        span = (self.num_frames - 1) * stride + 1
        if usable < span:
            raise ValueError(
                f"clip has {length} frames but {self.num_frames} frames at stride {stride} after "
                f"start_offset {self.start_offset} need {span + self.start_offset}"
            )
        first = self._window_start(usable - span, rng)
        return self.start_offset + first + stride * np.arange(self.num_frames, dtype=np.int64)

    def _window_start(self, last_start: int, rng: np.random.Generator) -> int:
        """A start in ``0 .. last_start`` (inclusive) by the start policy."""
        if self.start == "first":
            return 0
        if self.start == "center":
            return last_start // 2
        return int(rng.integers(0, last_start + 1))
