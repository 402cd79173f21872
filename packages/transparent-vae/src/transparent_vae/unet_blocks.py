"""The building blocks of the transparent decoder's UNet, numerically equal to diffusers' blocks.

``ResnetBlock`` = diffusers ``ResnetBlock2D`` without time embedding, ``SelfAttention`` = diffusers
``Attention`` as used by ``AttnDownBlock2D`` / ``UNetMidBlock2D`` (group norm, residual), and
``UpsampleConv`` = ``Upsample2D(use_conv=True)``. Keeping them numerically identical is what lets
LayerDiffuse's released UNet1024 weights load by key renaming alone (see :mod:`transparent_vae.weights`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a 1x1 shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, *, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.shortcut(x) if self.shortcut is not None else x) + h


class SelfAttention(nn.Module):
    """Spatial multi-head self-attention over all pixels with a group-normed input and a residual."""

    def __init__(self, channels: int, *, head_dim: int, groups: int, eps: float):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"attention width {channels} is not a multiple of attention_head_dim {head_dim}")
        self.heads = channels // head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).reshape(b, c, h * w).transpose(1, 2)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, h * w, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.to_q(tokens)), heads(self.to_k(tokens)), heads(self.to_v(tokens))
        )
        out = self.to_out(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UpsampleConv(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownLevel(nn.Module):
    """``layers`` resnets (each optionally followed by attention), then an optional stride-2 conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        layers: int,
        attention: bool,
        downsample: bool,
        head_dim: int,
        groups: int,
        eps: float,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if j == 0 else out_channels, out_channels, groups=groups, eps=eps)
            for j in range(layers)
        )
        self.attentions = nn.ModuleList(
            SelfAttention(out_channels, head_dim=head_dim, groups=groups, eps=eps)
            for _ in range(layers if attention else 0)
        )
        self.downsample = (
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) if downsample else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the output and the skip tensors (one per resnet, plus one after downsampling)."""
        skips = []
        for j, resnet in enumerate(self.resnets):
            x = resnet(x)
            if len(self.attentions):
                x = self.attentions[j](x)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class UpLevel(nn.Module):
    """``layers`` resnets over ``cat(x, skip)`` (each optionally followed by attention), then upsampling."""

    def __init__(
        self,
        in_channels: int,
        prev_channels: int,
        out_channels: int,
        *,
        layers: int,
        attention: bool,
        upsample: bool,
        head_dim: int,
        groups: int,
        eps: float,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(
                (prev_channels if j == 0 else out_channels)
                + (in_channels if j == layers - 1 else out_channels),
                out_channels,
                groups=groups,
                eps=eps,
            )
            for j in range(layers)
        )
        self.attentions = nn.ModuleList(
            SelfAttention(out_channels, head_dim=head_dim, groups=groups, eps=eps)
            for _ in range(layers if attention else 0)
        )
        self.upsample = UpsampleConv(out_channels) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Consumes ``skips`` from the end (the most recent skip first)."""
        for j, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1))
            if len(self.attentions):
                x = self.attentions[j](x)
        return self.upsample(x) if self.upsample is not None else x


class MidBlock(nn.Module):
    """resnet -> attention -> resnet at the coarsest level."""

    def __init__(self, channels: int, *, head_dim: int, groups: int, eps: float):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(channels, channels, groups=groups, eps=eps) for _ in range(2)
        )
        self.attention = SelfAttention(channels, head_dim=head_dim, groups=groups, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attention(self.resnets[0](x)))
