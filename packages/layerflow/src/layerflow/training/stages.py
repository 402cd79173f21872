"""What trains in each stage of the LayerFlow recipe, and the LoRAs the later stages add.

* stage 1 (layer-aware model): the chosen blocks in full, plus the layer embedder;
* stage 2 (motion LoRA): only the motion LoRA (rank 8) on the chosen blocks' attention;
* stage 3 (content LoRA): only the content LoRA (rank 256), the motion LoRA loaded frozen.

"The chosen blocks" are 1/6 of them, counted back from the last (official: 5, 11, 17, 23, 29 of 30).
The adapters are the transformer's own (:mod:`layerflow.models.adapters`: same names, same
projections, saved with the transformer), created one per stage through ``multi-lora``'s
model-level API (``add_adapter``, ``set_trainable``, per-sample ``set_scale``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

import multi_lora
from layerflow.models.adapters import CONTENT, MOTION

from .config import TrainConfig

BLOCKS = "transformer_blocks"


def chosen_blocks(num_blocks: int, interval: int) -> list[int]:
    """Every ``interval``-th block ending at the last: ``(30, 6) -> [5, 11, 17, 23, 29]``."""
    if num_blocks < 1 or interval < 1:
        raise ValueError(f"need num_blocks >= 1 and interval >= 1, got {num_blocks}, {interval}")
    return list(range(num_blocks - 1, -1, -interval))[::-1]


@dataclass(frozen=True)
class StagePlan:
    """The trainable set of one stage, resolved for one transformer."""

    stage: int
    blocks: tuple[int, ...]
    train_layer_embedder: bool
    #: Stage 1 trains every parameter (a base from random weights), not only ``blocks``.
    train_all: bool = False

    @classmethod
    def from_config(cls, config: TrainConfig, transformer: nn.Module) -> StagePlan:
        num_blocks = len(getattr(transformer, BLOCKS))
        return cls(
            stage=config.stage,
            blocks=tuple(chosen_blocks(num_blocks, config.model.block_interval)),
            train_layer_embedder=config.train_layer_embedder,
            train_all=config.model.stage1_trains == "all",
        )

    @property
    def trained_adapter(self) -> str | None:
        return {1: None, 2: MOTION, 3: CONTENT}[self.stage]


def adapter_config(
    config: TrainConfig, plan: StagePlan, name: str, trainable: bool
) -> multi_lora.AdapterConfig:
    rank = config.model.motion_rank if name == MOTION else config.model.content_rank
    return multi_lora.AdapterConfig(
        rank=rank,
        alpha=config.model.lora_alpha,
        target_modules=list(config.model.lora_targets),
        layers=list(plan.blocks),
        layers_pattern=BLOCKS,
        trainable=trainable,
    )


def apply_stage(transformer: nn.Module, config: TrainConfig, plan: StagePlan) -> dict[str, nn.Parameter]:
    """Freeze everything, then unfreeze (or add) what ``plan`` trains; returns the trained parameters by name.

    A motion LoRA already on the model (stage 3, loaded from stage 2) stays frozen.
    """
    transformer.requires_grad_(False)
    if plan.stage == 1 and plan.train_all:
        transformer.requires_grad_(True)
    elif plan.stage == 1:
        blocks = getattr(transformer, BLOCKS)
        for index in plan.blocks:
            blocks[index].requires_grad_(True)
    else:
        name = plan.trained_adapter
        assert name is not None
        if name in multi_lora.list_adapters(transformer):
            multi_lora.set_trainable(transformer, name, True)
        else:
            multi_lora.add_adapter(transformer, name, adapter_config(config, plan, name, trainable=True))
    for other in multi_lora.list_adapters(transformer):
        if other != plan.trained_adapter:
            multi_lora.set_trainable(transformer, other, False)
    if plan.train_layer_embedder:
        embedder = transformer.patch_embed.layer_embedder  # type: ignore[union-attr]
        if embedder is None:
            raise ValueError("train_layer_embedder is set, but the transformer has no layer embedder")
        embedder.requires_grad_(True)
    return trained_parameters(transformer)


def trained_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters with ``requires_grad``, by name (the set a stage's checkpoint stores)."""
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


def count_parameters(parameters: Mapping[str, nn.Parameter]) -> int:
    return sum(p.numel() for p in parameters.values())


def set_motion_gate(transformer: nn.Module, is_static: object) -> None:
    """Per-sample motion gate (static sample -> 1, real video -> 0) when the model has a motion LoRA."""
    if MOTION in multi_lora.list_adapters(transformer):
        multi_lora.set_scale(transformer, MOTION, is_static)  # type: ignore[arg-type]
