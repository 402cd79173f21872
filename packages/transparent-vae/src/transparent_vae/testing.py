"""Tiny, download-free models for tests, README examples and benchmarks.

The diffusers builders need the ``diffusers`` extra; the others depend on this package only.
"""

from __future__ import annotations

from typing import Any

import torch

from .decoder import TransparentDecoder
from .encoder import LatentOffsetEncoder


def tiny_decoder(latent_channels: int = 4, **overrides: Any) -> TransparentDecoder:
    """Four levels (size multiple 8), latent injected at 1/8, attention at the coarsest level."""
    config: dict[str, Any] = {
        "block_out_channels": (8, 8, 16, 16),
        "attention_levels": (False, False, False, True),
        "layers_per_block": 1,
        "latent_channels": latent_channels,
    }
    return TransparentDecoder(**(config | overrides))


def tiny_encoder(latent_channels: int = 4, **overrides: Any) -> LatentOffsetEncoder:
    """The offset encoder with widths (8, 8, 16, 16): spatial factor 8."""
    config: dict[str, Any] = {"block_channels": (8, 8, 16, 16), "latent_channels": latent_channels}
    return LatentOffsetEncoder(**(config | overrides))


def build_tiny_autoencoder_kl(seed: int = 0) -> Any:
    """A random 4-level diffusers ``AutoencoderKL`` (spatial factor 8, 4 latent channels), eval mode."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae: Any = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        scaling_factor=0.13025,
    )
    return vae.eval()


def build_tiny_cogvideox_vae(seed: int = 0) -> Any:
    """A random diffusers ``AutoencoderKLCogVideoX`` (16 latent channels, 8x spatial, 4x causal time), eval mode."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    vae: Any = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 16, 16),
        latent_channels=16,
        layers_per_block=1,
        norm_num_groups=4,
        temporal_compression_ratio=4,
        scaling_factor=1.15258426,
    )
    return vae.eval()
