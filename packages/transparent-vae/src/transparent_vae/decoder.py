"""The transparent decoder: ``(decoded RGB, latent) -> straight RGBA``, for images and per-frame video."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._frames import fold_frames, unfold_frames
from .modeling import ConfigModule, register_to_config, zero_module
from .temporal import TemporalResidualConv
from .tta import dihedral_median
from .unet_blocks import DownLevel, MidBlock, UpLevel

#: LayerDiffuse's UNet1024 predicts (alpha, R, G, B); this reorders it to (R, G, B, alpha).
_TO_RGBA = (1, 2, 3, 0)


class TransparentDecoder(ConfigModule):
    """LayerDiffuse's UNet1024 transparent decoder, with odd sizes, TTA and a per-frame video mode.

    The UNet sees the frozen VAE's decoded pixels (``[0, 1]``) and, through a zero-initialised 1x1 conv
    added at the level that is ``2**latent_level`` times downsampled, the (unscaled) latent the pixels
    were decoded from. The defaults are the released UNet1024 (7 levels, attention in the last 3,
    ~104 M parameters). Inputs whose size is not a multiple of ``2**(levels - 1)`` are padded by edge
    replication and the output is cropped back.

    Video ``[B, 3, T, H, W]`` is decoded frame by frame, each frame with the latent frame it was
    encoded into (``frame_index``); ``temporal_layers=True`` adds zero-initialised temporal convs at the
    latent level and below (identity at init) that a second training stage can use against alpha flicker.

    Args:
        in_channels: pixel channels (3).
        out_channels: predicted channels (4: alpha + RGB).
        latent_channels: latent channels of the base VAE (4 SD/SDXL, 16 CogVideoX/Flux).
        block_out_channels: width of every level.
        attention_levels: whether each level has self-attention after its resnets.
        layers_per_block: resnets per down level (up levels have one more).
        attention_head_dim: channels per attention head.
        norm_num_groups: GroupNorm groups.
        norm_eps: GroupNorm epsilon.
        latent_level: log2 of the base VAE's spatial factor (3 for 8x).
        temporal_layers: add zero-init temporal layers for the video mode.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 4,
        latent_channels: int = 4,
        block_out_channels: Sequence[int] = (32, 32, 64, 128, 256, 512, 512),
        attention_levels: Sequence[bool] = (False, False, False, False, True, True, True),
        layers_per_block: int = 2,
        attention_head_dim: int = 8,
        norm_num_groups: int = 4,
        norm_eps: float = 1e-5,
        latent_level: int = 3,
        temporal_layers: bool = False,
    ):
        super().__init__()
        levels = len(block_out_channels)
        if len(attention_levels) != levels:
            raise ValueError(
                f"attention_levels has {len(attention_levels)} entries but block_out_channels has {levels}"
            )
        if not 0 <= latent_level < levels:
            raise ValueError(
                f"latent_level must be in [0, {levels - 1}] for {levels} levels, got {latent_level}"
            )
        if out_channels != 4:
            raise ValueError(f"out_channels must be 4 (alpha + RGB), got {out_channels}")
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.latent_level = latent_level
        self.size_multiple = 2 ** (levels - 1)
        widths = list(block_out_channels)

        # 1. Inputs: pixels at full resolution, the latent at the level it matches.
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.latent_in = zero_module(nn.Conv2d(latent_channels, widths[max(latent_level - 1, 0)], 1))

        # 2. Encoder levels, 3. middle, 4. decoder levels (mirrored, with skips).
        self.down = nn.ModuleList(
            DownLevel(
                widths[max(i - 1, 0)],
                widths[i],
                layers=layers_per_block,
                attention=bool(attention_levels[i]),
                downsample=i < levels - 1,
                head_dim=attention_head_dim,
                groups=norm_num_groups,
                eps=norm_eps,
            )
            for i in range(levels)
        )
        self.mid = MidBlock(widths[-1], head_dim=attention_head_dim, groups=norm_num_groups, eps=norm_eps)
        reversed_widths = widths[::-1]
        self.up = nn.ModuleList(
            UpLevel(
                reversed_widths[min(i + 1, levels - 1)],
                reversed_widths[max(i - 1, 0)],
                reversed_widths[i],
                layers=layers_per_block + 1,
                attention=bool(attention_levels[levels - 1 - i]),
                upsample=i < levels - 1,
                head_dim=attention_head_dim,
                groups=norm_num_groups,
                eps=norm_eps,
            )
            for i in range(levels)
        )

        # 5. Output head.
        self.norm_out = nn.GroupNorm(norm_num_groups, widths[0], eps=norm_eps)
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

        # 6. Optional temporal layers: one per level from the latent level down, and one after the middle.
        self.temporal = (
            nn.ModuleList(
                TemporalResidualConv(widths[max(i - 1, 0)], causal=False, norm_groups=norm_num_groups)
                for i in range(latent_level, levels)
            )
            if temporal_layers
            else None
        )
        self.temporal_mid = (
            TemporalResidualConv(widths[-1], causal=False, norm_groups=norm_num_groups)
            if temporal_layers
            else None
        )

    # ------------------------------------------------------------------------------------------------
    def forward(
        self,
        pixels: torch.Tensor,
        latent: torch.Tensor,
        *,
        frame_index: torch.Tensor | None = None,
        tta: bool = False,
    ) -> torch.Tensor:
        """Straight RGBA in ``[0, 1]``.

        Args:
            pixels: the base VAE's decoded pixels in ``[0, 1]``: ``[B, 3, H, W]`` or ``[B, 3, T, H, W]``.
            latent: the unscaled latent they were decoded from: ``[B, C, ceil(H/f), ceil(W/f)]`` or
                ``[B, C, L, ...]`` with ``f = 2**latent_level``.
            frame_index: video only, ``[T]`` latent frame of every pixel frame
                (:meth:`TemporalLayout.frame_to_latent`); may be omitted when ``L == T``.
            tta: median over the 8 flips/rotations (8x the compute, off by default).

        Returns:
            ``[B, 4, ...]`` RGBA with the spatial size of ``pixels``.
        """
        if not tta:
            return self.predict_raw(pixels, latent, frame_index=frame_index).clamp(0, 1)
        frames, latents, batch = self._per_frame(pixels, latent, frame_index)
        # The transforms act on the last two axes only, so folded video frames stay in clip order.
        out = dihedral_median(
            lambda p, z: self._predict_frames(p, z, batch or None).clamp(0, 1), frames, latents
        )
        return unfold_frames(out, batch) if batch else out

    def predict_raw(
        self, pixels: torch.Tensor, latent: torch.Tensor, *, frame_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Like :meth:`forward` without clamping or TTA: the differentiable output used for training."""
        frames, latents, batch = self._per_frame(pixels, latent, frame_index)
        out = self._predict_frames(frames, latents, batch or None)
        return unfold_frames(out, batch) if batch else out

    # ------------------------------------------------------------------------------------------------
    def _per_frame(
        self, pixels: torch.Tensor, latent: torch.Tensor, frame_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Validate, then fold video frames into the batch with each frame's latent slice (batch 0 = image)."""
        if pixels.ndim not in (4, 5) or pixels.shape[1] != self.in_channels:
            raise ValueError(
                f"TransparentDecoder: pixels must be [B, {self.in_channels}, H, W] or [B, {self.in_channels}, T, H, W], "
                f"got {tuple(pixels.shape)}"
            )
        if (
            latent.ndim != pixels.ndim
            or latent.shape[1] != self.latent_channels
            or latent.shape[0] != pixels.shape[0]
        ):
            raise ValueError(
                f"TransparentDecoder: latent must be [B, {self.latent_channels}, ...] with the batch size and rank "
                f"of pixels {tuple(pixels.shape)}, got {tuple(latent.shape)}"
            )
        factor = 2**self.latent_level
        height, width = pixels.shape[-2:]
        grid = (math.ceil(height / factor), math.ceil(width / factor))
        if tuple(latent.shape[-2:]) != grid:
            raise ValueError(
                f"TransparentDecoder: pixels of {height}x{width} need a latent grid of {grid[0]}x{grid[1]} "
                f"(factor {factor}), got {latent.shape[-2]}x{latent.shape[-1]}"
            )
        if pixels.ndim == 4:
            if frame_index is not None:
                raise ValueError("frame_index is only meaningful for video input [B, C, T, H, W]")
            return pixels, latent, 0
        num_frames, num_latent = pixels.shape[2], latent.shape[2]
        if frame_index is None:
            if num_latent != num_frames:
                raise ValueError(
                    f"video with {num_frames} frames and {num_latent} latent frames: pass frame_index "
                    "(TemporalLayout.frame_to_latent) to say which latent frame each pixel frame uses"
                )
            frame_index = torch.arange(num_frames, device=latent.device)
        if (
            frame_index.shape != (num_frames,)
            or int(frame_index.min()) < 0
            or int(frame_index.max()) >= num_latent
        ):
            raise ValueError(
                f"frame_index must be [{num_frames}] with values in [0, {num_latent - 1}], got shape "
                f"{tuple(frame_index.shape)}"
            )
        latent_frames = latent.index_select(2, frame_index.to(latent.device))
        return fold_frames(pixels), fold_frames(latent_frames), pixels.shape[0]

    def _predict_frames(self, pixels: torch.Tensor, latent: torch.Tensor, batch: int | None) -> torch.Tensor:
        """The padded UNet on ``[N, 3, H, W]``; ``batch`` set means N = batch * T frames of one clip each."""
        height, width = pixels.shape[-2:]
        padded_h = math.ceil(height / self.size_multiple) * self.size_multiple
        padded_w = math.ceil(width / self.size_multiple) * self.size_multiple
        factor = 2**self.latent_level
        if (padded_h, padded_w) != (height, width):
            pixels = F.pad(pixels, (0, padded_w - width, 0, padded_h - height), mode="replicate")
            latent = F.pad(
                latent,
                (0, padded_w // factor - latent.shape[-1], 0, padded_h // factor - latent.shape[-2]),
                mode="replicate",
            )
        out = self._unet(pixels, latent, batch)
        return out[:, _TO_RGBA, :height, :width]

    def _unet(self, x: torch.Tensor, latent: torch.Tensor, batch: int | None) -> torch.Tensor:
        def mix_time(module: nn.Module | None, h: torch.Tensor) -> torch.Tensor:
            if module is None or batch is None:
                return h
            return fold_frames(module(unfold_frames(h, batch)))

        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(self.down):
            if i == self.latent_level:
                h = h + self.latent_in(latent)
            if self.temporal is not None and i >= self.latent_level:
                h = mix_time(self.temporal[i - self.latent_level], h)
            h, level_skips = level(h)
            skips += level_skips
        h = mix_time(self.temporal_mid, self.mid(h))
        for level in self.up:
            h = level(h, skips)
        return self.conv_out(F.silu(self.norm_out(h)))
