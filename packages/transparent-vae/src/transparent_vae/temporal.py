"""Causal temporal compression (CogVideoX-style) and the zero-initialised temporal layers.

CogVideoX's VAE halves time twice. Each halving keeps the first frame alone when the frame count is
odd and averages pairs otherwise, so ``1 + 4k`` frames give ``1 + k`` latent frames (frame 0 alone,
then groups of 4) and ``4k`` frames give ``k`` groups of 4. :class:`TemporalLayout` computes that
grouping once, and both the video offset encoder (to pool its features) and the transparent decoder
(to give every frame the latent slice it was encoded into) use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .modeling import zero_module


def halve_causal(num_frames: int) -> list[tuple[int, int]]:
    """One causal temporal halving: ``[start, stop)`` frame ranges of the output frames."""
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    if num_frames % 2:
        return [(0, 1)] + [(i, i + 2) for i in range(1, num_frames, 2)]
    return [(i, i + 2) for i in range(0, num_frames, 2)]


@dataclass(frozen=True)
class TemporalLayout:
    """Which pixel frames each latent frame summarises, for ``downsamples`` causal halvings.

    ``TemporalLayout(0)`` is the identity (an image VAE applied per frame); ``TemporalLayout(2)``
    is CogVideoX (temporal compression 4).
    """

    downsamples: int = 0

    def __post_init__(self) -> None:
        if self.downsamples < 0:
            raise ValueError(f"downsamples must be >= 0, got {self.downsamples}")

    @property
    def compression(self) -> int:
        return 2**self.downsamples

    def groups(self, num_frames: int) -> list[tuple[int, int]]:
        """``[start, stop)`` pixel-frame range of every latent frame."""
        groups = [(t, t + 1) for t in range(num_frames)] if num_frames >= 1 else []
        if not groups:
            raise ValueError(f"need at least one frame, got {num_frames}")
        for _ in range(self.downsamples):
            groups = [(groups[a][0], groups[b - 1][1]) for a, b in halve_causal(len(groups))]
        return groups

    def num_latent_frames(self, num_frames: int) -> int:
        return len(self.groups(num_frames))

    def frame_to_latent(self, num_frames: int, device: torch.device | None = None) -> torch.Tensor:
        """``[T]`` long tensor: the latent frame each pixel frame was encoded into."""
        index = [k for k, (start, stop) in enumerate(self.groups(num_frames)) for _ in range(start, stop)]
        return torch.tensor(index, dtype=torch.long, device=device)


def pool_groups(x: torch.Tensor, groups: list[tuple[int, int]]) -> torch.Tensor:
    """Average ``x`` (``[B, C, T, H, W]``) over each ``[start, stop)`` frame range -> ``[B, C, len(groups), H, W]``."""
    weights = torch.zeros(len(groups), x.shape[2], dtype=x.dtype, device=x.device)
    for k, (start, stop) in enumerate(groups):
        weights[k, start:stop] = 1.0 / (stop - start)
    return torch.einsum("kt,bcthw->bckhw", weights, x)


class TemporalResidualConv(nn.Module):
    """``x + conv_t(norm(x))`` along time only, zero-initialised so it starts as the identity.

    ``causal=True`` pads by repeating the first frame (a frame never sees the future, as in the causal
    VAE); otherwise both ends are padded by replication (the decoder sees the whole clip).
    """

    def __init__(self, channels: int, *, causal: bool, kernel_size: int = 3, norm_groups: int | None = None):
        super().__init__()
        if kernel_size < 1 or (not causal and kernel_size % 2 == 0):
            raise ValueError(f"kernel_size must be >= 1 (odd when not causal), got {kernel_size}")
        self.causal = causal
        self.kernel_size = kernel_size
        self.norm = nn.GroupNorm(norm_groups, channels) if norm_groups else nn.Identity()
        self.conv = zero_module(nn.Conv3d(channels, channels, kernel_size=(kernel_size, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C, T, H, W]``."""
        h = self.norm(x)
        pad = self.kernel_size - 1
        front, back = (pad, 0) if self.causal else (pad // 2, pad // 2)
        h = F.pad(h, (0, 0, 0, 0, front, back), mode="replicate") if pad else h
        return x + self.conv(h)
