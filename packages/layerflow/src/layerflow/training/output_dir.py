"""Who owns a stage's output folder: a new run never mixes with, nor silently replaces, an old one.

A previous training run is recognised by what the trainer writes into ``output_dir`` (and nothing
else): a ``config.json`` holding a training config, ``checkpoints/checkpoint-<step>`` folders (or
their hidden temporaries), ``final/`` with its ``training.json``, and then ``logs/``. A new run there
needs ``resume`` (continue it) or ``overwrite`` (replace it); ``overwrite`` removes exactly those
entries, so caches, synthetic data and any file of the user's in the folder stay.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from layerflow.stage_output import StageOutput

from .checkpointing import PREFIX

CONFIG = "config.json"
LOGS = "logs"


class OutputInUseError(RuntimeError):
    """The output folder holds a previous training run and neither resume nor overwrite was asked."""


def previous_run(output_dir: Path) -> list[Path]:
    """The entries of ``output_dir`` a previous training run wrote (empty for a fresh folder)."""
    found = [output_dir / CONFIG] if _is_training_config(output_dir / CONFIG) else []
    checkpoints = output_dir / "checkpoints"
    if checkpoints.is_dir():
        found += sorted(p for p in checkpoints.iterdir() if p.name.lstrip(".").startswith(PREFIX))
    stage = StageOutput(output_dir)
    if stage.is_finished():
        found.append(stage.final)
    if found and (output_dir / LOGS).is_dir():
        found.append(output_dir / LOGS)
    return found


def check_output_dir(output_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a fresh run in a folder that holds a previous run, naming the folder and the two options."""
    if resume and overwrite:
        raise OutputInUseError("resume and overwrite exclude each other: continue the run or replace it")
    found = previous_run(output_dir)
    if found and not resume and not overwrite:
        names = sorted({p.relative_to(output_dir).parts[0] for p in found})
        raise OutputInUseError(
            f"{output_dir} holds a previous training run ({', '.join(names)}): pass --resume to continue "
            "it or --overwrite to replace it (or choose another --output-root)"
        )


def clear_previous_run(output_dir: Path) -> None:
    """Remove what a previous training run wrote into ``output_dir``; nothing else is touched."""
    for path in previous_run(output_dir):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    checkpoints = output_dir / "checkpoints"
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()


def _is_training_config(path: Path) -> bool:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and {"stage", "model", "data", "run"} <= set(content)
