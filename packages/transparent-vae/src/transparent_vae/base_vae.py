"""The base-VAE interface the transparent VAE needs, and adapters for diffusers' VAEs.

A base VAE is anything that encodes pixels in ``[-1, 1]`` to a diagonal Gaussian posterior
(mean, std) in its *unscaled* latent space and decodes such latents back to pixels.
:class:`BaseVAE` states that contract once; :func:`as_base_vae` wraps a diffusers
``AutoencoderKL`` or ``AutoencoderKLCogVideoX`` (the ``diffusers`` extra) and says why it rejected
anything else.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from ._frames import fold_frames, unfold_frames
from .temporal import TemporalLayout


class BaseVAE(nn.Module, ABC):
    """A frozen RGB VAE seen through the transparent VAE's eyes.

    Subclasses set the attributes below and implement :meth:`_encode_posterior` / :meth:`_decode` on
    their native layout. An image VAE (``layout.downsamples == 0``) also accepts video by running
    frame by frame; a video VAE accepts video only.

    Attributes:
        latent_channels: channels of the latent.
        spatial_factor: pixels per latent cell along each side (8 for SD / CogVideoX).
        scaling_factor, shift_factor: diffusion latents are ``(z - shift) * scale``.
        layout: the temporal compression (identity for image VAEs).
    """

    latent_channels: int
    spatial_factor: int
    scaling_factor: float
    shift_factor: float
    layout: TemporalLayout

    @property
    def is_video(self) -> bool:
        """Whether the VAE compresses time itself (it then only accepts ``[B, 3, T, H, W]``)."""
        return self.layout.downsamples > 0

    @abstractmethod
    def _encode_posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def _decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def encode_posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels in ``[-1, 1]`` -> (mean, std) of the posterior, unscaled."""
        if self._native(pixels, "encode_posterior", channels=3):
            return self._encode_posterior(pixels)
        mean, std = self._encode_posterior(fold_frames(pixels))
        return unfold_frames(mean, pixels.shape[0]), unfold_frames(std, pixels.shape[0])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents -> pixels in (about) ``[-1, 1]``."""
        if self._native(latents, "decode", channels=self.latent_channels):
            return self._decode(latents)
        return unfold_frames(self._decode(fold_frames(latents)), latents.shape[0])

    def _native(self, x: torch.Tensor, what: str, channels: int) -> bool:
        """True when ``x`` is in the VAE's own layout; False for video through an image VAE."""
        if x.ndim not in (4, 5) or x.shape[1] != channels:
            raise ValueError(
                f"{type(self).__name__}.{what}: expected [B, {channels}, H, W] or [B, {channels}, T, H, W], "
                f"got {tuple(x.shape)}"
            )
        if self.is_video and x.ndim != 5:
            raise ValueError(
                f"{type(self).__name__}.{what}: this video VAE needs [B, {channels}, T, H, W] "
                f"(T=1 for a single image), got {tuple(x.shape)}"
            )
        return self.is_video or x.ndim == 4


class AutoencoderKLAdapter(BaseVAE):
    """diffusers ``AutoencoderKL`` (SD 1.5 / SDXL / Flux VAEs); video is encoded frame by frame."""

    def __init__(self, vae: Any):
        super().__init__()
        self.vae = vae
        config = vae.config
        self.latent_channels = int(config.latent_channels)
        self.spatial_factor = 2 ** (len(config.block_out_channels) - 1)
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        self.layout = TemporalLayout(0)

    def _encode_posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(pixels).latent_dist
        return posterior.mean, posterior.std

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample


class CogVideoXVAEAdapter(BaseVAE):
    """diffusers ``AutoencoderKLCogVideoX``: 3D causal, time compressed 4x with frame 0 alone."""

    def __init__(self, vae: Any):
        super().__init__()
        self.vae = vae
        config = vae.config
        ratio = int(config.temporal_compression_ratio)
        if ratio < 1 or ratio & (ratio - 1):
            raise ValueError(f"temporal_compression_ratio must be a power of two, got {ratio}")
        self.latent_channels = int(config.latent_channels)
        self.spatial_factor = 2 ** (len(config.block_out_channels) - 1)
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        self.layout = TemporalLayout(int(math.log2(ratio)))

    def _encode_posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(pixels).latent_dist
        return posterior.mean, posterior.std

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample


def _adapter_for(vae: Any) -> tuple[type[BaseVAE] | None, list[str]]:
    """The adapter class that supports ``vae``, or the reasons each candidate rejected it."""
    try:
        from diffusers import AutoencoderKL, AutoencoderKLCogVideoX
    except ImportError as error:
        return None, [f"diffusers adapters unavailable ({error}); install transparent-vae[diffusers]"]
    candidates: list[tuple[type[BaseVAE], type]] = [
        (AutoencoderKLAdapter, AutoencoderKL),
        (CogVideoXVAEAdapter, AutoencoderKLCogVideoX),
    ]
    reasons = []
    for adapter, vae_class in candidates:
        if isinstance(vae, vae_class):
            return adapter, []
        reasons.append(f"{adapter.__name__}: not a diffusers {vae_class.__name__}")
    return None, reasons


def as_base_vae(vae: Any) -> BaseVAE:
    """Return ``vae`` if it already is a :class:`BaseVAE`, else wrap it in the adapter that supports it."""
    if isinstance(vae, BaseVAE):
        return vae
    adapter, reasons = _adapter_for(vae)
    if adapter is None:
        raise TypeError(
            f"unsupported base VAE {type(vae).__module__}.{type(vae).__name__}: "
            + "; ".join(reasons)
            + ". Subclass transparent_vae.BaseVAE for other VAEs."
        )
    return adapter(vae)
