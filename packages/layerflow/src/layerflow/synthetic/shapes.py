"""Signed distance functions of the foreground shapes, vectorised over frames and pixels.

Distances are in pixels, negative inside, for shape-local coordinates ``(x, y)`` with y pointing
*up* and the shape centred at the origin; ``radius`` is the circumradius-like size of the shape
(broadcastable, one value per frame). Coverage comes from the distance with a linear ramp
(``coverage``), which gives exact-area, anti-aliased alpha without supersampling. The formulas are
the standard closed forms for these primitives (circle, box, equilateral triangle, five-point
star, annulus, cross).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

ShapeSDF = Callable[[Tensor, Tensor, Tensor], Tensor]


def _length(x: Tensor, y: Tensor) -> Tensor:
    return torch.sqrt(x * x + y * y)


def circle(x: Tensor, y: Tensor, radius: Tensor) -> Tensor:
    return _length(x, y) - radius


def square(x: Tensor, y: Tensor, radius: Tensor) -> Tensor:
    half = radius * 0.8  # a square of the same area class as the circle
    dx, dy = x.abs() - half, y.abs() - half
    outside = _length(dx.clamp(min=0), dy.clamp(min=0))
    return outside + torch.maximum(dx, dy).clamp(max=0)


def triangle(x: Tensor, y: Tensor, radius: Tensor) -> Tensor:
    """Equilateral triangle pointing up with circumradius ``radius``."""
    k = math.sqrt(3.0)
    half_side = radius * k / 2
    px = x.abs() - half_side
    py = y + half_side / k
    fold = px + k * py > 0
    px, py = torch.where(fold, (px - k * py) / 2, px), torch.where(fold, (-k * px - py) / 2, py)
    px = px - torch.minimum(torch.maximum(px, -2 * half_side), torch.zeros_like(px))
    return -_length(px, py) * torch.sign(py)


def star(x: Tensor, y: Tensor, radius: Tensor) -> Tensor:
    """Five-point star pointing up, outer radius ``radius``, inner/outer ratio 0.45."""
    inner = 0.45
    k1x, k1y = math.cos(math.pi / 5), -math.sin(math.pi / 5)
    k2x, k2y = -k1x, k1y
    px, py = x.abs(), y
    d = (k1x * px + k1y * py).clamp(min=0) * 2
    px, py = px - d * k1x, py - d * k1y
    d = (k2x * px + k2y * py).clamp(min=0) * 2
    px, py = px - d * k2x, py - d * k2y
    px, py = px.abs(), py - radius
    # Edge from the tip (0, r) towards the inner vertex, in the tip's frame: ba = rf*(-k1y, k1x) - (0, 1).
    bax, bay = radius * inner * -k1y, radius * inner * k1x - radius
    h = ((px * bax + py * bay) / (bax * bax + bay * bay)).clamp(0.0, 1.0)
    return _length(px - bax * h, py - bay * h) * torch.sign(py * bax - px * bay)


def ring(x: Tensor, y: Tensor, radius: Tensor) -> Tensor:
    """Annulus with outer radius ``radius`` and a band 40% of it wide."""
    return (_length(x, y) - radius * 0.8).abs() - radius * 0.2


def cross(x: Tensor, y: Tensor, radius: Tensor) -> Tensor:
    """Plus sign with arms reaching ``radius`` and 0.34·radius thick on each side of the axis."""
    arm, thick = radius, radius * 0.34
    px, py = x.abs(), y.abs()
    px, py = torch.maximum(px, py), torch.minimum(px, py)
    qx, qy = px - arm, py - thick
    k = torch.maximum(qx, qy)
    wx = torch.where(k > 0, qx, thick - px)
    wy = torch.where(k > 0, qy, -k)
    return torch.sign(k) * _length(wx.clamp(min=0), wy.clamp(min=0))


SHAPE_SDFS: dict[str, ShapeSDF] = {
    "circle": circle,
    "square": square,
    "triangle": triangle,
    "star": star,
    "ring": ring,
    "cross": cross,
}


def coverage(distance: Tensor, edge_width: float) -> Tensor:
    """Alpha from a signed distance: 1 inside, 0 outside, a linear ramp ``edge_width`` px wide.

    With ``edge_width = 1`` this is the usual box-filter approximation of the pixel's area
    coverage; wider ramps give softer (feathered) edges with the same 0.5 iso-line.
    """
    if edge_width <= 0:
        raise ValueError(f"edge_width must be positive, got {edge_width}")
    return (0.5 - distance / edge_width).clamp(0.0, 1.0)


def local_coordinates(
    height: int, width: int, centers: Tensor, angles: Tensor, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Shape-local (x, y-up) coordinates of every pixel centre, per frame: two ``[T, H, W]`` tensors.

    ``centers`` is ``[T, 2]`` (x, y in pixels, y down), ``angles`` is ``[T]`` (radians,
    counter-clockwise on screen).
    """
    ys = torch.arange(height, dtype=dtype) + 0.5
    xs = torch.arange(width, dtype=dtype) + 0.5
    dx = xs.view(1, 1, width) - centers[:, 0].view(-1, 1, 1).to(dtype)
    dy_up = -(ys.view(1, height, 1) - centers[:, 1].view(-1, 1, 1).to(dtype))
    cos, sin = torch.cos(angles).view(-1, 1, 1).to(dtype), torch.sin(angles).view(-1, 1, 1).to(dtype)
    return cos * dx + sin * dy_up, -sin * dx + cos * dy_up
