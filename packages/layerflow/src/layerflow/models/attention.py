"""Seam to the ``layer-attention`` package: install its processor, describe the token segments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn


def uses_layer_attention(transformer: nn.Module) -> bool:
    """Whether any attention processor of ``transformer`` comes from ``layer_attention``."""
    processors = getattr(transformer, "attn_processors", {})
    return any(type(p).__module__.startswith("layer_attention") for p in processors.values())


def segment_attention_kwargs(transformer: nn.Module, lengths: Sequence[int]) -> dict[str, Any]:
    """``attention_kwargs`` carrying the segment layout when the layer-attention processor is installed."""
    if not uses_layer_attention(transformer):
        return {}
    raise NotImplementedError
