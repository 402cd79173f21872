"""Training for LayerFlow's three-stage recipe: layer-aware model, motion LoRA, content LoRA."""

from .checkpointing import CheckpointError, latest_checkpoint
from .cli import main
from .config import ConfigError, TrainConfig, load_config
from .export import MissingStageError
from .objective import Objective, masked_v_loss
from .stages import StagePlan, apply_stage, chosen_blocks
from .trainer import LayerFlowTrainer, TrainResult, train

__all__ = [
    "CheckpointError",
    "ConfigError",
    "LayerFlowTrainer",
    "MissingStageError",
    "Objective",
    "StagePlan",
    "TrainConfig",
    "TrainResult",
    "apply_stage",
    "chosen_blocks",
    "latest_checkpoint",
    "load_config",
    "main",
    "masked_v_loss",
    "train",
]
