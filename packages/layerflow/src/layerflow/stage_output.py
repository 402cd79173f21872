"""A training stage's output folder, and the one answer to "is this stage finished".

``<output_root>/stage{N}/final/`` is written in one atomic swap (:func:`layerflow.atomic.atomic_directory`)
holding ``pipeline/`` (``save_pretrained``) and ``training.json``: a stage is finished when both are
there. The chain, the exports, resume checks and the demo all ask :meth:`StageOutput.is_finished`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .output_policy import PIPELINE_INDEX

FINAL = "final"
PIPELINE = "pipeline"
RECORD = "training.json"


@dataclass(frozen=True)
class StageOutput:
    """The output folder ``root`` of one training stage."""

    root: Path

    @classmethod
    def of(cls, output_root: str | os.PathLike[str], stage: int) -> StageOutput:
        """Stage ``stage``'s folder under ``output_root`` (the trainer's default layout)."""
        return cls(Path(output_root) / f"stage{stage}")

    @property
    def final(self) -> Path:
        return self.root / FINAL

    @property
    def pipeline(self) -> Path:
        """The exported pipeline, what the next stage and the CLI load."""
        return self.final / PIPELINE

    @property
    def record(self) -> Path:
        """``training.json``: stage, steps, losses, config."""
        return self.final / RECORD

    def is_finished(self) -> bool:
        return self.record.is_file() and (self.pipeline / PIPELINE_INDEX).is_file()
