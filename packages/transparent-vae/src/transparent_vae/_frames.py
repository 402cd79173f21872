"""Fold the frames of a video ``[B, C, T, H, W]`` into the batch ``[B*T, C, H, W]`` and back."""

from __future__ import annotations

import torch


def fold_frames(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W] -> [B*T, C, H, W]`` (frame-major within each sample)."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def unfold_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B*T, C, H, W] -> [B, C, T, H, W]``, the inverse of :func:`fold_frames`."""
    return x.reshape(batch, x.shape[0] // batch, *x.shape[1:]).transpose(1, 2)
