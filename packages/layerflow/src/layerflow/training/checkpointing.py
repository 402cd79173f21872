"""Resumable checkpoints, written atomically, with no pickle anywhere.

A checkpoint is a folder ``checkpoints/checkpoint-<step>/``::

    trained.safetensors     the stage's trained parameters (float32), by parameter name
    optimizer.safetensors   Adam moments and step counts (``state.<param name>.<key>``)
    ema.safetensors         EMA shadow parameters (when EMA is on)
    rng-rank<r>.safetensors torch CPU (and CUDA) generator states of rank r
    state.json              step, data position, loss history, optimizer hyper-parameters, LR
                            scheduler, grad scaler, numpy/python RNG, config; written LAST

Everything is written into a hidden temporary folder (``layerflow.media.atomic.atomic_directory``)
that is renamed into place only when complete, so a killed run leaves either a whole checkpoint or
none (stale temporary folders are ignored and cleaned up on resume). :func:`latest_checkpoint` only
considers folders with a ``state.json``; a checkpoint damaged afterwards (a truncated file) is skipped
with a warning by :func:`newest_readable_checkpoint`, which resumes from the one before it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from layerflow.atomic import atomic_directory

CHECKPOINT_FORMAT = "layerflow-train-checkpoint"
CHECKPOINT_VERSION = 1
PREFIX = "checkpoint-"
STATE = "state.json"
logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not belong to this run."""


@dataclass
class TrainingState:
    """Where a run is: the counters and histories a resume restores besides the tensors."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    losses: list[float] = field(default_factory=list)


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"{PREFIX}{step}"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        suffix = path.name.removeprefix(PREFIX)
        if path.name.startswith(PREFIX) and suffix.isdigit() and (path / STATE).is_file():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = complete_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix(PREFIX))


# ----------------------------------------------------------------------------- serialisation
def optimizer_tensors(
    optimizer: torch.optim.Optimizer, names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as (tensors keyed ``state.<param name>.<key>``, JSON-able hyper-parameters)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{names[index]}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(names[index], {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(
    optimizer: torch.optim.Optimizer,
    names: list[str],
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
) -> None:
    state: dict[int, dict[str, Any]] = {}
    index = {name: i for i, name in enumerate(names)}
    for key, value in tensors.items():
        _, rest = key.split(".", 1)
        name, _, field_name = rest.rpartition(".")
        if name not in index:
            raise CheckpointError(f"optimizer state for unknown parameter {name!r}")
        state.setdefault(index[name], {})[field_name] = value
    for name, values in meta["scalars"].items():
        state.setdefault(index[name], {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = cuda_state
    return tensors


def python_rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss = random.getstate()
    return {
        "numpy": [kind, np.asarray(keys).tolist(), position, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }


def restore_rng(tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> None:
    torch.random.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------------------- write / read
@dataclass
class CheckpointContent:
    """Everything one checkpoint holds, gathered on the main process."""

    trained: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]


def write_checkpoint(
    output_dir: Path,
    step: int,
    content: CheckpointContent,
    rank_rng: list[dict[str, torch.Tensor]],
    keep: int | None,
) -> Path:
    """Write checkpoint ``step`` (main process) through a temporary folder renamed into place when complete.

    ``rank_rng``: every rank's generator states (gathered), one file per rank. ``state.json`` is the
    last file written; a write that fails or is killed leaves no ``checkpoint-<step>``.
    """
    final = checkpoint_dir(output_dir, step)
    with atomic_directory(final, overwrite=True) as tmp:
        save_file(_contiguous(content.trained), str(tmp / "trained.safetensors"))
        save_file(_contiguous(content.optimizer), str(tmp / "optimizer.safetensors"))
        if content.ema is not None:
            save_file(_contiguous(content.ema), str(tmp / "ema.safetensors"))
        for rank, tensors in enumerate(rank_rng):
            save_file(_contiguous(tensors), str(tmp / f"rng-rank{rank}.safetensors"))
        _write_json(
            tmp / STATE, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **content.state}
        )
    prune(output_dir, keep, step)
    return final


def remove_stale_temporaries(output_dir: Path) -> None:
    """Temporary checkpoint folders a killed run left behind (never loadable, only disk space)."""
    root = output_dir / "checkpoints"
    if root.is_dir():
        for path in root.glob(f".{PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)


def prune(output_dir: Path, keep: int | None, step: int) -> None:
    """Keep the ``keep`` newest checkpoints up to ``step`` (the one just written).

    Checkpoints of higher steps are not this run's past (e.g. a damaged one the run fell back from and
    will overwrite when it gets there): they are neither counted nor removed.
    """
    if keep is None:
        return
    past = [path for path in complete_checkpoints(output_dir) if checkpoint_step(path) <= step]
    for old in past[:-keep]:
        shutil.rmtree(old)


def read_checkpoint(path: Path, rank: int) -> tuple[CheckpointContent, dict[str, torch.Tensor]]:
    """A checkpoint's content and this rank's RNG tensors; :class:`CheckpointError` when incomplete."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    state_file = path / STATE
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE})")
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{state_file} is damaged: {error}") from None
    if not isinstance(state, dict) or (state.get("format"), state.get("version")) != (
        CHECKPOINT_FORMAT,
        CHECKPOINT_VERSION,
    ):
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} v{CHECKPOINT_VERSION} checkpoint")
    ema_file = path / "ema.safetensors"
    rng_file = path / f"rng-rank{rank}.safetensors"
    content = CheckpointContent(
        trained=_load_tensors(path / "trained.safetensors"),
        optimizer=_load_tensors(path / "optimizer.safetensors"),
        ema=_load_tensors(ema_file) if ema_file.is_file() else None,
        state=state,
    )
    return content, _load_tensors(rng_file) if rng_file.is_file() else {}


def newest_readable_checkpoint(
    output_dir: Path, rank: int
) -> tuple[Path, CheckpointContent, dict[str, torch.Tensor]] | None:
    """The newest checkpoint of ``output_dir`` that reads completely (``None`` when there is none).

    A damaged newer one (a truncated safetensors or JSON file) is skipped with a warning naming it;
    when every checkpoint is damaged, :class:`CheckpointError` lists them.
    """
    damaged = []
    for path in reversed(complete_checkpoints(output_dir)):
        try:
            return (path, *read_checkpoint(path, rank))
        except CheckpointError as error:
            logger.warning("skipping checkpoint %s for an older one: %s", path.name, error)
            damaged.append(str(error))
    if damaged:
        raise CheckpointError(f"no checkpoint of {output_dir} reads completely: {'; '.join(damaged)}")
    return None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{path} is damaged: {error}") from None


def _contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=1, default=_json_default)
        handle.flush()
        os.fsync(handle.fileno())


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's state.json")
