"""Pixel <-> model-input conversion for layer clips (official LayerFlow conventions).

Library tensors are float in [0, 1], frames first ``[B, T, C, H, W]``, straight alpha. The model
sees clips in [-1, 1]: a foreground premultiplied onto mid-grey (``fg*a + 0.5*(1-a)``) and, in the
``alpha_clip`` representation, its alpha matte repeated to 3 channels.
"""

from __future__ import annotations

import torch

GREY = 0.5
#: Below this alpha the colour of a decoded foreground is undefined; it is set to grey there.
MIN_ALPHA = 1e-3


def to_model_range(frames: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return frames * 2.0 - 1.0


def from_model_range(frames: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped (the VAE can overshoot)."""
    return ((frames + 1.0) / 2.0).clamp(0.0, 1.0)


def premultiply_onto_grey(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Straight ``rgb`` ``[..., 3, H, W]`` and ``alpha`` ``[..., 1, H, W]`` -> colour composited over mid-grey."""
    return rgb * alpha + GREY * (1.0 - alpha)


def unpremultiply_from_grey(composited: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`premultiply_onto_grey`, grey where alpha is (nearly) zero; result in [0, 1]."""
    safe = alpha.clamp_min(MIN_ALPHA)
    rgb = (composited - GREY * (1.0 - alpha)) / safe
    return torch.where(alpha > MIN_ALPHA, rgb, torch.full_like(rgb, GREY)).clamp(0.0, 1.0)


def alpha_to_clip(alpha: torch.Tensor) -> torch.Tensor:
    """Alpha ``[..., 1, H, W]`` -> the official 3-channel alpha clip."""
    return alpha.expand(*alpha.shape[:-3], 3, *alpha.shape[-2:])


def alpha_from_clip(clip: torch.Tensor) -> torch.Tensor:
    """Decoded alpha clip ``[..., 3, H, W]`` in [0, 1] -> alpha ``[..., 1, H, W]`` (channel mean)."""
    return clip.mean(dim=-3, keepdim=True).clamp(0.0, 1.0)
