"""A tiny, download-free base VAE for tests, demos and benchmarks.

It is a linear patch VAE: the encoder projects each ``f x f`` RGB patch on the lowest-frequency 2D
DCT bases (mean colour first), the decoder is the exact transpose (orthonormal bases), and the
posterior has a fixed small std. Decoding its latent gives a blurred version of the input, which is
all the transparent VAE needs from a base VAE to be trained and tested end to end on a CPU.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base_vae import BaseVAE
from .temporal import TemporalLayout


def _dct_bases(size: int, count: int) -> torch.Tensor:
    """``[count, 3, size, size]`` orthonormal DCT-II bases: lowest frequencies first, each per colour."""
    position = torch.arange(size, dtype=torch.float64) + 0.5
    frequencies = sorted(
        ((u, v) for u in range(size) for v in range(size)), key=lambda uv: (uv[0] + uv[1], uv)
    )
    bases = []
    for u, v in frequencies:
        row = torch.cos(math.pi * u * position / size) * (
            math.sqrt(1 / size) if u == 0 else math.sqrt(2 / size)
        )
        col = torch.cos(math.pi * v * position / size) * (
            math.sqrt(1 / size) if v == 0 else math.sqrt(2 / size)
        )
        for colour in range(3):
            basis = torch.zeros(3, size, size, dtype=torch.float64)
            basis[colour] = row[:, None] * col[None, :]
            bases.append(basis)
            if len(bases) == count:
                return torch.stack(bases).float()
    raise ValueError(f"a {size}x{size} RGB patch has only {3 * size * size} bases, asked for {count}")


class TinyVAE(BaseVAE):
    """Linear patch VAE with DCT bases: ``latent_channels`` x ``(H/f, W/f)`` latents, std ``posterior_std``.

    Args:
        latent_channels: latent channels (4 like SD, 16 like CogVideoX / Flux).
        spatial_factor: patch size (8 like SD).
        scaling_factor: diffusion-space scale reported to the transparent VAE.
        posterior_std: the fixed std of the Gaussian posterior.
    """

    def __init__(
        self,
        latent_channels: int = 4,
        spatial_factor: int = 8,
        scaling_factor: float = 1.0,
        posterior_std: float = 0.05,
    ):
        super().__init__()
        if posterior_std <= 0:
            raise ValueError(f"posterior_std must be > 0, got {posterior_std}")
        self.latent_channels = latent_channels
        self.spatial_factor = spatial_factor
        self.scaling_factor = scaling_factor
        self.shift_factor = 0.0
        self.layout = TemporalLayout(0)
        bases = _dct_bases(spatial_factor, latent_channels) * spatial_factor  # latent ~ mean colour scale
        self.encoder = nn.Conv2d(3, latent_channels, spatial_factor, stride=spatial_factor, bias=False)
        self.decoder = nn.ConvTranspose2d(
            latent_channels, 3, spatial_factor, stride=spatial_factor, bias=False
        )
        with torch.no_grad():
            self.encoder.weight.copy_(bases / spatial_factor**2)
            self.decoder.weight.copy_(bases)
        self.log_std = nn.Parameter(torch.full((1, latent_channels, 1, 1), math.log(posterior_std)))

    def _encode_posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if pixels.shape[-2] % self.spatial_factor or pixels.shape[-1] % self.spatial_factor:
            raise ValueError(
                f"TinyVAE: height and width must be multiples of {self.spatial_factor}, got {tuple(pixels.shape[-2:])}"
            )
        mean = self.encoder(pixels)
        return mean, self.log_std.exp().expand_as(mean)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)
