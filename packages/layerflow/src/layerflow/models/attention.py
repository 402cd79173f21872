"""Seam to the ``layer-attention`` package: install its processor, describe the token segments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from layer_attention import SegmentLayout
from layer_attention.diffusers import LayerAttentionProcessor


def install_layer_attention(transformer: nn.Module, backend: str = "auto") -> None:
    """Put ``layer-attention``'s CogVideoX processor (joint text + video, QK norm) in every block."""
    transformer.set_attn_processor(LayerAttentionProcessor(backend))  # type: ignore[operator]


def uses_layer_attention(transformer: nn.Module) -> bool:
    """Whether every attention processor of ``transformer`` is the layer-attention one."""
    processors = getattr(transformer, "attn_processors", {})
    return bool(processors) and all(isinstance(p, LayerAttentionProcessor) for p in processors.values())


def segment_attention_kwargs(
    transformer: nn.Module, lengths: Sequence[int], allowed: Sequence[Sequence[bool]] | None = None
) -> dict[str, Any]:
    """``attention_kwargs`` carrying the segment layout for the layer-attention processor.

    With the stock processor there is nothing to pass for full attention, and a restricted layout
    (``allowed``) cannot be honoured: that raises instead of silently attending to everything.
    """
    if not uses_layer_attention(transformer):
        if allowed is not None:
            raise ValueError(
                "restricted attention between layers needs the layer-attention processor "
                "(transformer config attention_backend)"
            )
        return {}
    # the shared layout of this shape: its tile lists and device copies are built once and reused
    # by every block, step, call and gradient-checkpointing recompute
    return {
        "layout": SegmentLayout.cached(
            list(lengths), None if allowed is None else [list(row) for row in allowed]
        )
    }
