"""Generated RGBA training data: soft-edged coloured shapes on a transparent background.

Used by the tests, the README demo and the benchmark so that nothing is downloaded. Every batch is
a pure function of ``(seed, index)``, so an interrupted training run resumes on the same data.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def random_rgba_shapes(
    batch_size: int,
    height: int,
    width: int,
    *,
    num_frames: int | None = None,
    generator: torch.Generator | None = None,
    max_shapes: int = 3,
) -> torch.Tensor:
    """Ellipses and rectangles with random colours, soft edges and opacity, moving linearly in video.

    Returns straight RGBA in ``[0, 1]``: ``[B, 4, H, W]``, or ``[B, 4, T, H, W]`` when ``num_frames`` is
    given. Colour under fully transparent pixels is random noise, as in real cut-outs.
    """
    frames = 1 if num_frames is None else num_frames
    if batch_size < 1 or height < 1 or width < 1 or frames < 1:
        raise ValueError(f"sizes must be >= 1, got batch {batch_size}, {height}x{width}, {frames} frames")

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator)

    ys = torch.linspace(0, 1, height).view(1, 1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, 1, width)
    time = torch.linspace(0, 1, frames).view(1, frames, 1, 1)
    noise = uniform(batch_size, 3, frames, height, width)
    premultiplied = torch.zeros(batch_size, 3, frames, height, width)
    alpha = torch.zeros(batch_size, 1, frames, height, width)
    for _ in range(max_shapes):
        present = (uniform(batch_size) < 0.8).float().view(batch_size, 1, 1, 1)
        cy, cx = (
            uniform(batch_size, 1, 1, 1, low=0.2, high=0.8),
            uniform(batch_size, 1, 1, 1, low=0.2, high=0.8),
        )
        vy, vx = (
            uniform(batch_size, 1, 1, 1, low=-0.2, high=0.2),
            uniform(batch_size, 1, 1, 1, low=-0.2, high=0.2),
        )
        ry, rx = (
            uniform(batch_size, 1, 1, 1, low=0.1, high=0.35),
            uniform(batch_size, 1, 1, 1, low=0.1, high=0.35),
        )
        dy, dx = (ys - cy - vy * time) / ry, (xs - cx - vx * time) / rx
        is_box = (uniform(batch_size) < 0.5).view(batch_size, 1, 1, 1)
        distance = torch.where(is_box, torch.maximum(dy.abs(), dx.abs()), (dy**2 + dx**2).sqrt())
        softness = uniform(batch_size, 1, 1, 1, low=0.02, high=0.3)
        coverage = (
            ((1 - distance) / softness).clamp(0, 1)
            * uniform(batch_size, 1, 1, 1, low=0.5, high=1.0)
            * present
        )
        colour = uniform(batch_size, 3, 1, 1, 1)
        coverage = coverage.unsqueeze(1)
        premultiplied = colour * coverage + premultiplied * (1 - coverage)
        alpha = coverage + alpha * (1 - coverage)
    rgb = torch.where(alpha > 0, premultiplied / alpha.clamp_min(1e-6), noise).clamp(0, 1)
    rgba = torch.cat([rgb, alpha], dim=1)
    return rgba[:, :, 0] if num_frames is None else rgba


class RGBAShapes:
    """An endless, reproducible iterable of :func:`random_rgba_shapes` batches (batch ``i`` uses seed ``seed + i``)."""

    def __init__(
        self,
        batch_size: int,
        height: int,
        width: int,
        *,
        num_frames: int | None = None,
        seed: int = 0,
    ):
        self.batch_size, self.height, self.width = batch_size, height, width
        self.num_frames = num_frames
        self.seed = seed

    def batch(self, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + index)
        return random_rgba_shapes(
            self.batch_size, self.height, self.width, num_frames=self.num_frames, generator=generator
        )

    def __iter__(self) -> Iterator[torch.Tensor]:
        index = 0
        while True:
            yield self.batch(index)
            index += 1
