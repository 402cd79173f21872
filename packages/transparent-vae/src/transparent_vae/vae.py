"""``TransparentVAE``: a frozen RGB VAE plus the offset encoder and transparent decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .alpha import grey_composite, pad_rgb, signed_to_unit, split_rgba
from .base_vae import BaseVAE, as_base_vae
from .decoder import TransparentDecoder
from .encoder import LatentOffsetEncoder


@dataclass
class OffsetLatents:
    """What encoding an RGBA input produces; training needs every part, inference only ``latents``.

    Attributes:
        latents: diffusion-space latents ``(raw - shift) * scale``.
        raw: unscaled latents ``mean + std * gain * offset``.
        mean, std: the frozen base VAE's posterior of the grey composite.
        offset: the encoder output ``E(alpha, padded RGB)`` (before ``std * gain``).
        padded_rgb, alpha: the inputs the encoder saw (also the decoder's targets).
        grey: the grey composite ``(rgb*2 - 1) * alpha`` the base VAE encoded.
    """

    latents: torch.Tensor
    raw: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    offset: torch.Tensor
    padded_rgb: torch.Tensor
    alpha: torch.Tensor
    grey: torch.Tensor


class TransparentVAE(nn.Module):
    """LayerDiffuse latent transparency on top of a frozen RGB (image or video) VAE.

    ``encode(rgba)`` returns latents of the base VAE's own space that decode, with the base decoder
    alone, to the RGBA composited over 50 % grey; ``decode(latents)`` recovers straight RGBA.
    The offset enters inside the posterior, ``z = mean + std * offset_gain * E(alpha, padded RGB)``,
    so it looks like posterior noise the frozen decoder already tolerates.

    Args:
        base_vae: a :class:`BaseVAE` (e.g. :class:`TinyVAE`) or a diffusers ``AutoencoderKL`` /
            ``AutoencoderKLCogVideoX`` (wrapped by :func:`as_base_vae`). It is not modified; freeze it
            for training (``train_transparent_vae`` does).
        encoder: the offset encoder; its latent channels, spatial factor and temporal compression must
            match the base VAE.
        decoder: the transparent decoder; its latent channels and latent level must match.
        offset_gain: constant multiplier of the encoder output. Released weights disagree: 300 for
            LayerDiffuse's diffusers CLI (``ld_diffusers_sdxl_vae_transparent_encoder``) and Flux ports,
            1 for the Forge / ComfyUI files. A large gain speeds up training of the zero-init layer.
    """

    def __init__(
        self,
        base_vae: Any,
        encoder: LatentOffsetEncoder,
        decoder: TransparentDecoder,
        offset_gain: float = 1.0,
    ):
        super().__init__()
        self.base_vae: BaseVAE = as_base_vae(base_vae)
        self.encoder = encoder
        self.decoder = decoder
        self.offset_gain = float(offset_gain)
        self._check_compatible()

    def _check_compatible(self) -> None:
        base, enc, dec = self.base_vae, self.encoder, self.decoder
        problems = []
        if enc.latent_channels != base.latent_channels:
            problems.append(
                f"encoder latent_channels {enc.latent_channels} != base VAE {base.latent_channels}"
            )
        if enc.spatial_factor != base.spatial_factor:
            problems.append(f"encoder spatial factor {enc.spatial_factor} != base VAE {base.spatial_factor}")
        if enc.layout != base.layout:
            problems.append(
                f"encoder temporal_downsamples {enc.layout.downsamples} != base VAE {base.layout.downsamples}"
            )
        if dec.latent_channels != base.latent_channels:
            problems.append(
                f"decoder latent_channels {dec.latent_channels} != base VAE {base.latent_channels}"
            )
        if 2**dec.latent_level != base.spatial_factor:
            problems.append(
                f"decoder latent_level {dec.latent_level} != log2(base spatial factor {base.spatial_factor})"
            )
        if enc.in_channels != 4:
            problems.append(f"encoder in_channels must be 4 (alpha + padded RGB), got {enc.in_channels}")
        if problems:
            raise ValueError("TransparentVAE: incompatible parts: " + "; ".join(problems))

    # ------------------------------------------------------------------------------------------------
    def encode_offset(self, rgba: torch.Tensor) -> OffsetLatents:
        """Encode straight RGBA in ``[0, 1]`` (``[B, 4, H, W]`` or ``[B, 4, T, H, W]``), keeping the parts."""
        rgb, alpha = split_rgba(rgba)
        factor = self.base_vae.spatial_factor
        if rgba.shape[-2] % factor or rgba.shape[-1] % factor:
            raise ValueError(
                f"TransparentVAE.encode: height and width must be multiples of {factor}, got {tuple(rgba.shape[-2:])}"
            )
        padded = pad_rgb(rgb, alpha)
        grey = grey_composite(rgb, alpha)
        mean, std = self.base_vae.encode_posterior(grey)
        offset = self.encoder(torch.cat([alpha, padded], dim=1))
        if offset.shape != mean.shape:
            raise ValueError(
                f"offset encoder output {tuple(offset.shape)} does not match the base VAE latent {tuple(mean.shape)}"
            )
        raw = mean + std * (self.offset_gain * offset)
        latents = (raw - self.base_vae.shift_factor) * self.base_vae.scaling_factor
        return OffsetLatents(latents, raw, mean, std, offset, padded, alpha, grey)

    def encode(self, rgba: torch.Tensor) -> torch.Tensor:
        """Straight RGBA in ``[0, 1]`` -> diffusion-space latents of the base VAE."""
        return self.encode_offset(rgba).latents

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion-space latents -> the base VAE's raw latent space."""
        return latents / self.base_vae.scaling_factor + self.base_vae.shift_factor

    def frame_index(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """Latent frame of every decoded frame (video), ``None`` for images."""
        if pixels.ndim != 5:
            return None
        return self.base_vae.layout.frame_to_latent(pixels.shape[2], device=pixels.device)

    def decode(self, latents: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
        """Diffusion-space latents -> straight RGBA in ``[0, 1]`` (``[B, 4, H, W]`` or ``[B, 4, T, H, W]``)."""
        raw = self.unscale(latents)
        pixels = signed_to_unit(self.base_vae.decode(raw))
        return self.decoder(pixels, raw, frame_index=self.frame_index(pixels), tta=tta)

    def forward(self, rgba: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
        """Round trip: ``decode(encode(rgba))``."""
        return self.decode(self.encode(rgba), tta=tta)
