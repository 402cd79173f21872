"""Background patterns on an infinite plane, sampled through a panning camera.

Each pattern maps world coordinates (pixels) to a tone in [0, 1]; the background colour is
``shade + tone * (colour - shade)`` with ``shade = SHADE * colour``, so every pixel keeps the hue
of the named colour. A pan shifts the world by ``pan * t`` pixels at frame ``t``; all patterns are
periodic, so any pan stays defined.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .attributes import BackgroundAttributes
from .vocabulary import COLOURS

SHADE = 0.5  # brightness of the dark tone relative to the named colour
NOISE_CELLS = 8  # lattice size of the periodic cloud noise (cells per period)


def _rotate(x: Tensor, y: Tensor, angle: float) -> tuple[Tensor, Tensor]:
    c, s = math.cos(angle), math.sin(angle)
    return c * x + s * y, -s * x + c * y


def _soft_square_wave(u: Tensor, period: float, sharpness: float = 4.0) -> Tensor:
    """A square wave of ``u`` with smooth (anti-aliased) transitions, in [0, 1]."""
    return 0.5 + 0.5 * torch.tanh(sharpness * torch.sin(2 * math.pi * u / period))


def _smooth_noise(x: Tensor, y: Tensor, period: float, seed: int) -> Tensor:
    """Periodic value noise: a random lattice interpolated with smoothstep, two octaves."""
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros_like(x)
    weight_sum = 0.0
    for octave, weight in ((1, 1.0), (2, 0.45)):
        cells = NOISE_CELLS * octave
        lattice = torch.rand(cells, cells, generator=generator, dtype=x.dtype)
        gx, gy = x / period * cells, y / period * cells
        x0, y0 = torch.floor(gx), torch.floor(gy)
        fx, fy = gx - x0, gy - y0
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        ix0, iy0 = x0.long() % cells, y0.long() % cells
        ix1, iy1 = (ix0 + 1) % cells, (iy0 + 1) % cells
        top = lattice[iy0, ix0] * (1 - fx) + lattice[iy0, ix1] * fx
        bottom = lattice[iy1, ix0] * (1 - fx) + lattice[iy1, ix1] * fx
        total = total + weight * (top * (1 - fy) + bottom * fy)
        weight_sum += weight
    noise = total / weight_sum
    low, high = noise.amin(), noise.amax()
    return (noise - low) / (high - low).clamp(min=1e-6)


def pattern_tone(attributes: BackgroundAttributes, x: Tensor, y: Tensor) -> Tensor:
    """Tone in [0, 1] of the pattern at world coordinates ``x, y`` (any matching shapes)."""
    u, v = _rotate(x, y, attributes.angle)
    u = u + attributes.phase * attributes.period
    if attributes.pattern == "gradient":
        return 0.5 - 0.5 * torch.cos(2 * math.pi * u / attributes.period)
    if attributes.pattern == "stripes":
        return _soft_square_wave(u, attributes.period)
    if attributes.pattern == "checkerboard":
        product = torch.sin(2 * math.pi * u / attributes.period) * torch.sin(
            2 * math.pi * v / attributes.period
        )
        return 0.5 + 0.5 * torch.tanh(6.0 * product)
    if attributes.pattern == "clouds":
        return _smooth_noise(u, v, attributes.period, attributes.noise_seed)
    raise ValueError(f"unknown background pattern {attributes.pattern!r}")


def render_background(attributes: BackgroundAttributes, num_frames: int, height: int, width: int) -> Tensor:
    """The background video ``[T, 3, H, W]`` in [0, 1]."""
    t = torch.arange(num_frames, dtype=torch.float32).view(-1, 1, 1)
    ys = (torch.arange(height, dtype=torch.float32) + 0.5).view(1, height, 1)
    xs = (torch.arange(width, dtype=torch.float32) + 0.5).view(1, 1, width)
    world_x = (xs - attributes.pan[0] * t).expand(num_frames, height, width)
    world_y = (ys - attributes.pan[1] * t).expand(num_frames, height, width)
    tone = pattern_tone(attributes, world_x, world_y).unsqueeze(1)
    colour = torch.tensor(COLOURS[attributes.colour], dtype=torch.float32).view(1, 3, 1, 1)
    return SHADE * colour + tone * (1 - SHADE) * colour
