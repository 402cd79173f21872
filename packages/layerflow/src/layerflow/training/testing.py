"""Small helpers for tests and benchmarks of the trainer: tiny configs and a clean accelerate state."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig, load_config, merge_tables
from .trainer import LayerFlowTrainer, TrainResult


def tiny_test_config(root: str | Path, stage: int, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The tiny built-in config shrunk for tests: 16x16 clips, 8 samples, batch 2, 6 steps, no tracker.

    Outputs go to ``root/stage{N}``; the synthetic data and caches under ``root`` are shared between
    stages and tests (they are reused when up to date).
    """
    root = Path(root)
    base: dict[str, Any] = {
        "data": {"height": 16, "width": 16, "synthetic_dir": str(root / "embedded-data"), "cache_dir": None},
        "optim": {"batch_size": 2, "lr_warmup_steps": 0},
        "run": {
            "output_root": str(root),
            "max_steps": 6,
            "checkpoint_every": 3,
            "keep_checkpoints": None,
            "tracker": "none",
            "progress": False,
        },
    }
    sources = {
        1: [{"kind": "synthetic", "num_samples": 8}],
        2: [{"kind": "synthetic", "num_samples": 8, "freeze": True}],
        3: [{"kind": "synthetic", "num_samples": 8, "freeze": True}, {"kind": "synthetic", "num_samples": 8}],
    }[stage]
    base["data"]["sources"] = sources
    base["data"].pop("cache_dir")
    return load_config(None, stage, merge_tables(base, overrides or {}))


def train_tiny(
    root: str | Path, name: str, overrides: dict[str, Any] | None = None, **kwargs: Any
) -> TrainResult:
    """Train a :func:`tiny_test_config` stage-1 run into ``root/name`` (cache shared in ``root/cache``);
    ``kwargs`` go to :class:`~layerflow.training.trainer.LayerFlowTrainer` (``resume``, ``overwrite``, ...)."""
    reset_accelerate_state()
    root = Path(root)
    settings: dict[str, Any] = {
        "run": {"output_dir": str(root / name)},
        "data": {"cache_dir": str(root / "cache")},
    }
    return LayerFlowTrainer(
        tiny_test_config(root, 1, merge_tables(settings, overrides or {})), **kwargs
    ).train()


def fully_shard_for_cpu(
    transformer: torch.nn.Module, optimizer: torch.optim.Optimizer, num_processes: int
) -> torch.nn.Module:
    """Shard ``transformer`` with torch's FSDP2 over a CPU gloo mesh (each block, then the root), as
    accelerate's FSDP2 does on GPUs, and point ``optimizer`` at the sharded parameters (by name).

    accelerate shards only on accelerator devices; this is how the sharded checkpoint and export code
    runs on a CPU-only machine (:class:`CPUShardedTrainer`).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (num_processes,))
    names = {id(param): name for name, param in transformer.named_parameters()}
    groups = [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    for block in transformer.transformer_blocks:  # type: ignore[union-attr]
        fully_shard(block, mesh=mesh)
    fully_shard(transformer, mesh=mesh)
    sharded = dict(transformer.named_parameters())
    for group, group_names in zip(optimizer.param_groups, groups):
        group["params"] = [sharded[name] for name in group_names]
    return transformer


def free_port() -> int:
    """A TCP port free on localhost now (for a test's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def join_cpu_group(rank: int, world_size: int, port: int) -> None:
    """Give this process the environment ``ACCELERATE_USE_CPU=yes torchrun`` gives rank ``rank`` of a
    ``world_size``-process gloo group on localhost (the CPU launch that works), for forked test workers."""
    os.environ.update(
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        ACCELERATE_USE_CPU="yes",
        GLOO_SOCKET_IFNAME="lo",
    )


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide state, so a new ``Accelerator`` can be configured afresh."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


class CPUShardedTrainer(LayerFlowTrainer):
    """The trainer with its model sharded by FSDP2 on a CPU mesh (:func:`fully_shard_for_cpu`) instead of
    by accelerate: every other line (loop, checkpoints, resume, export) is the trainer's own."""

    def _prepare(
        self, transformer: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.nn.Module, Any]:
        model = fully_shard_for_cpu(transformer, optimizer, self.accelerator.num_processes)
        return model, self.accelerator.prepare_optimizer(optimizer)
