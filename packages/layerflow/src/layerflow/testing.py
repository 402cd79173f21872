"""Test helpers on top of :mod:`layerflow.tiny` (which production code imports instead of this module)."""

from __future__ import annotations

import torch

from .layout import LayerLayout
from .tiny import (
    TINY_PROMPT_TOKENS,
    TINY_TEXT_LENGTH,
    TINY_TEXT_WIDTH,
    TINY_WORDS,
    build_tiny_pipeline,
    build_tiny_transformer,
    build_tiny_transparent_vae,
    build_tiny_vae,
    single_thread,
    tiny_transformer_config,
    tiny_words,
)

__all__ = [
    "TINY_PROMPT_TOKENS",
    "TINY_TEXT_LENGTH",
    "TINY_TEXT_WIDTH",
    "TINY_WORDS",
    "build_tiny_pipeline",
    "build_tiny_transformer",
    "build_tiny_transparent_vae",
    "build_tiny_vae",
    "random_layer_frames",
    "single_thread",
    "tiny_transformer_config",
    "tiny_words",
]


def random_layer_frames(
    layout: LayerLayout, num_frames: int = 8, height: int = 16, width: int = 16, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random frames for every layer: foregrounds RGBA (straight alpha), others RGB, ``[T, C, H, W]`` in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    frames: dict[str, torch.Tensor] = {}
    for spec in layout.layers:
        channels = 4 if spec.transparent else 3
        frames[spec.name] = torch.rand(num_frames, channels, height, width, generator=generator)
    return frames
