"""The latent-offset encoder: ``(alpha, padded RGB) -> offset`` on the base VAE's latent grid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._frames import fold_frames, unfold_frames
from .modeling import ConfigModule, register_to_config, zero_module
from .temporal import TemporalLayout, TemporalResidualConv, halve_causal, pool_groups


class LatentOffsetEncoder(ConfigModule):
    """LayerDiffuse's offset encoder, optionally made causal in time for a video VAE.

    Image form (``temporal_downsamples=0``, the released LayerDiffuse network): 3x3 convs with SiLU,
    two per width, a stride-2 step between widths (3 steps for the VAE's 8x), then a zero-initialised
    3x3 conv to ``latent_channels``, so the offset is exactly 0 before training and the frozen VAE's
    latents are untouched. A video ``[B, C, T, H, W]`` goes through it frame by frame.

    Video form (``temporal_downsamples=k``): the same per-frame trunk, then ``k`` stages of
    (zero-init causal temporal conv, causal halving with :func:`~transparent_vae.temporal.halve_causal`),
    so frame 0 maps alone to latent frame 0 and later frames to groups of ``2**k``, exactly like
    CogVideoX (``k=2``). At init the stages average the per-frame features of each group, so image
    weights warm-start a video encoder.

    Args:
        in_channels: input channels (LayerDiffuse: alpha + padded RGB = 4).
        latent_channels: the base VAE's latent channels (4 for SD/SDXL, 16 for CogVideoX / Flux).
        block_channels: trunk widths; ``len - 1`` stride-2 steps give the spatial factor.
        temporal_downsamples: causal temporal halvings (0: image / per-frame; 2: CogVideoX).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        latent_channels: int = 4,
        block_channels: Sequence[int] = (32, 64, 128, 256),
        temporal_downsamples: int = 0,
    ):
        super().__init__()
        if in_channels < 1 or latent_channels < 1:
            raise ValueError(
                f"in_channels and latent_channels must be >= 1, got {in_channels}, {latent_channels}"
            )
        if len(block_channels) < 1 or min(block_channels) < 1:
            raise ValueError(
                f"block_channels must be a non-empty list of positive widths, got {block_channels}"
            )
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.spatial_factor = 2 ** (len(block_channels) - 1)
        self.layout = TemporalLayout(temporal_downsamples)
        convs: list[nn.Conv2d] = []
        width = in_channels
        for level, channels in enumerate(block_channels):
            convs.append(nn.Conv2d(width, channels, 3, stride=1 if level == 0 else 2, padding=1))
            convs.append(nn.Conv2d(channels, channels, 3, padding=1))
            width = channels
        self.convs = nn.ModuleList(convs)
        self.temporal = nn.ModuleList(
            TemporalResidualConv(width, causal=True) for _ in range(temporal_downsamples)
        )
        self.conv_out = zero_module(nn.Conv2d(width, latent_channels, 3, padding=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, in, H, W] -> [B, latent, H/f, W/f]``, or ``[B, in, T, H, W] -> [B, latent, T', H/f, W/f]``
        with ``T' = layout.num_latent_frames(T)``."""
        self._check(features)
        if features.ndim == 4:
            return self.conv_out(self._trunk(features))
        batch = features.shape[0]
        x = unfold_frames(self._trunk(fold_frames(features)), batch)
        for stage in self.temporal:
            x = pool_groups(stage(x), halve_causal(x.shape[2]))
        return unfold_frames(self.conv_out(fold_frames(x)), batch)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.silu(conv(x))
        return x

    def _check(self, features: torch.Tensor) -> None:
        if features.ndim not in (4, 5) or features.shape[1] != self.in_channels:
            raise ValueError(
                f"LatentOffsetEncoder expects [B, {self.in_channels}, H, W] or [B, {self.in_channels}, T, H, W], "
                f"got shape {tuple(features.shape)}"
            )
        if features.ndim == 4 and self.layout.downsamples:
            raise ValueError(
                f"this encoder compresses time ({self.layout.downsamples} causal halvings); pass a video "
                f"[B, C, T, H, W] (T=1 for a single image), got shape {tuple(features.shape)}"
            )
        h, w = features.shape[-2:]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(
                f"LatentOffsetEncoder: height and width must be multiples of {self.spatial_factor}, got {h}x{w}"
            )
