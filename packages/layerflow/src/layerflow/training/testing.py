"""Small helpers for tests and benchmarks of the trainer: tiny configs and a clean accelerate state."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import TrainConfig, load_config, merge_tables

if TYPE_CHECKING:
    from .trainer import TrainResult


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
    from .trainer import LayerFlowTrainer

    reset_accelerate_state()
    root = Path(root)
    settings: dict[str, Any] = {
        "run": {"output_dir": str(root / name)},
        "data": {"cache_dir": str(root / "cache")},
    }
    return LayerFlowTrainer(
        tiny_test_config(root, 1, merge_tables(settings, overrides or {})), **kwargs
    ).train()


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide state, so a new ``Accelerator`` can be configured afresh."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
