"""Resumable checkpoints, written atomically through torch.distributed.checkpoint, with no pickle anywhere.

A checkpoint is a folder ``checkpoints/checkpoint-<step>/``::

    tensors/                the trained parameters (``trained.<name>``), optimizer state
                            (``optimizer.<name>.<key>``) and EMA shadows (``ema.<name>``), written by
                            ``torch.distributed.checkpoint`` as safetensors shards (one per rank, each
                            holding that rank's shard of a sharded (FSDP2) tensor and the layout in its header)
    rng-rank<r>.safetensors torch CPU (and CUDA) generator states of rank r
    state.json              step, data position, loss history, optimizer hyper-parameters, LR
                            scheduler, grad scaler, numpy/python RNG, config; written LAST

Every engine writes the same format: one process, DDP (each tensor replicated, written once), FSDP2
(each rank writes its shards) and DeepSpeed ZeRO (its partitions gathered into the full float32
weights and AdamW states a torch optimizer has, by :mod:`.zero`); reading re-shards, so a checkpoint
resumes under another process count or engine. All ranks write into one hidden temporary folder, which the main process renames into
place when every rank is done (:func:`shared_atomic_directory`), so a killed run leaves either a whole
checkpoint or none (stale temporary folders are ignored and cleaned up on resume).
:func:`latest_checkpoint` only considers folders with a ``state.json``; a checkpoint damaged afterwards
(a truncated file) is skipped with a warning by :func:`newest_readable_checkpoint`, which resumes from
the one before it. The output folder must be one file system that every rank sees (multi-node: a
shared file system).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from layerflow.atomic import atomic_directory

CHECKPOINT_FORMAT = "layerflow-train-checkpoint"
CHECKPOINT_VERSION = 2
TENSORS = "tensors"
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
def checkpoint_tensors(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trained: Mapping[str, torch.Tensor],
    ema: Mapping[str, torch.Tensor] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors a checkpoint holds, by key (this rank's shards where the model is sharded), and the
    optimizer's JSON-able rest (hyper-parameters, non-tensor state).

    The optimizer state is torch's own by parameter name (``get_optimizer_state_dict``, which sees
    through DDP and FSDP2 and creates the state a fresh optimizer lacks), so it loads under any engine.
    The same call gives the destination a resume loads into, in place. Collective under a process group.
    """
    optim: dict[str, Any] = dict(get_optimizer_state_dict(model, optimizer))
    tensors = {f"trained.{name}": param.detach() for name, param in trained.items()}
    scalars: dict[str, dict[str, Any]] = {}
    for name, values in optim["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{name}.{key}"] = value
            else:
                scalars.setdefault(name, {})[key] = value
    if ema is not None:
        tensors |= {f"ema.{name}": shadow for name, shadow in ema.items()}
    return tensors, {"param_groups": optim["param_groups"], "scalars": scalars}


def load_optimizer(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
) -> None:
    """Set the optimizer from loaded :func:`checkpoint_tensors` and the checkpoint's optimizer record."""
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            name, _, field_name = key.removeprefix("optimizer.").rpartition(".")
            state.setdefault(name, {})[field_name] = value
    for name, values in meta["scalars"].items():
        if name not in state:
            raise CheckpointError(f"optimizer state for unknown parameter {name!r}")
        state[name].update(values)
    record: dict[str, Any] = {"state": state, "param_groups": meta["param_groups"]}
    set_optimizer_state_dict(model, optimizer, record)


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
    """A checkpoint read whole into one process (for inspection; training loads :func:`load_tensors`)."""

    trained: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def barrier() -> None:
    if distributed():
        dist.barrier()


@contextlib.contextmanager
def shared_atomic_directory(path: Path) -> Iterator[Path]:
    """:func:`~layerflow.atomic.atomic_directory` written by every rank: the main process creates the
    temporary folder and renames it into place once every rank has left the block."""
    if not distributed():
        with atomic_directory(path, overwrite=True) as temporary:
            yield temporary
        return
    main = rank() == 0
    with atomic_directory(path, overwrite=True) if main else contextlib.nullcontext() as temporary:
        shared = [str(temporary) if main else None]
        dist.broadcast_object_list(shared, src=0)
        yield Path(str(shared[0]))
        barrier()  # every rank wrote its part: the main process may rename
    barrier()  # the checkpoint is in place for everyone


def write_checkpoint(
    output_dir: Path,
    step: int,
    tensors: Mapping[str, torch.Tensor],
    state: Mapping[str, Any] | None,
    keep: int | None,
) -> Path:
    """Write checkpoint ``step`` with every rank (collective) through one temporary folder renamed into
    place when complete; ``state`` (read on the main process only) is the last file written, so a write
    that fails or is killed leaves no ``checkpoint-<step>``."""
    final = checkpoint_dir(output_dir, step)
    with shared_atomic_directory(final) as tmp:
        writer = HuggingFaceStorageWriter(str(tmp / TENSORS), save_distributed=distributed())
        with _dcp_call():
            dcp.save(dict(tensors), storage_writer=writer, no_dist=not distributed())
        save_file(_contiguous(rng_tensors()), str(tmp / f"rng-rank{rank()}.safetensors"))
        barrier()
        if rank() == 0:
            assert state is not None, "the main process writes state.json"
            _write_json(tmp / STATE, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state})
    if rank() == 0:
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


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``; :class:`CheckpointError` when missing, damaged or of another format."""
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
    return state


def check_readable(path: Path) -> dict[str, Any]:
    """The state of a checkpoint whose every file reads (headers and sizes of the safetensors files);
    every rank checks every file, so all ranks agree on which checkpoint to resume from."""
    state = read_state(path)
    shards = sorted((path / TENSORS).glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{path} has no tensors ({TENSORS}/*.safetensors)")
    for file in [*shards, *sorted(path.glob("rng-rank*.safetensors"))]:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (OSError, SafetensorError) as error:
            raise CheckpointError(f"{file.relative_to(path.parent)} is damaged: {error}") from None
    return state


def load_tensors(path: Path, destination: Mapping[str, torch.Tensor]) -> None:
    """Load a checkpoint's tensors into ``destination`` in place, re-sharding to the layout the
    destination tensors have (collective under a process group)."""
    with torch.no_grad(), _dcp_call():
        reader = HuggingFaceStorageReader(str(path / TENSORS))
        dcp.load(dict(destination), storage_reader=reader, no_dist=not distributed())


def read_rng(path: Path, rank_index: int) -> dict[str, torch.Tensor]:
    """Rank ``rank_index``'s generator states (empty for a rank the saving run did not have)."""
    file = path / f"rng-rank{rank_index}.safetensors"
    return _load_tensors(file) if file.is_file() else {}


def read_checkpoint(path: Path, rank_index: int = 0) -> tuple[CheckpointContent, dict[str, torch.Tensor]]:
    """A checkpoint gathered whole into this process (no process group needed) and rank
    ``rank_index``'s RNG tensors; :class:`CheckpointError` when incomplete."""
    state = check_readable(path)
    reader = HuggingFaceStorageReader(str(path / TENSORS))
    metadata = reader.read_metadata().state_dict_metadata
    tensors = {
        key: torch.empty(tuple(item.size), dtype=item.properties.dtype)  # type: ignore[union-attr]
        for key, item in metadata.items()
    }
    with _dcp_call():
        dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(path / TENSORS)), no_dist=True)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

    ema = part("ema.")
    content = CheckpointContent(part("trained."), part("optimizer."), ema or None, state)
    return content, read_rng(path, rank_index)


def newest_readable_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint of ``output_dir`` that reads completely (``None`` when there is none).

    A damaged newer one (a truncated safetensors or JSON file) is skipped with a warning naming it;
    when every checkpoint is damaged, :class:`CheckpointError` lists them.
    """
    damaged = []
    for path in reversed(complete_checkpoints(output_dir)):
        try:
            check_readable(path)
            return path
        except CheckpointError as error:
            logger.warning("skipping checkpoint %s for an older one: %s", path.name, error)
            damaged.append(str(error))
    if damaged:
        raise CheckpointError(f"no checkpoint of {output_dir} reads completely: {'; '.join(damaged)}")
    return None


@contextlib.contextmanager
def _dcp_call() -> Iterator[None]:
    """Around a torch.distributed.checkpoint call: silence its warning that it assumes one process (here
    that is the plan), and give a Ctrl-C back as itself (it wraps every failure of its steps, an
    interrupt included, in a ``CheckpointException``), so an interrupted run says how to resume."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="torch.distributed is disabled, unavailable or uninitialized"
        )
        try:
            yield
        except CheckpointException as error:
            if any(isinstance(failure[0], KeyboardInterrupt) for failure in error.failures.values()):
                raise KeyboardInterrupt from error
            raise


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
