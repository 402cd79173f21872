"""Placement of user frames in a clip (the "over" rule itself is :mod:`layerflow.compositing`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from layerflow.media import premultiply, unpremultiply


@dataclass(frozen=True)
class Placement:
    """Where user frames go in the clip: resized by ``scale``, top-left corner at ``offset`` (x, y) pixels."""

    scale: float = 1.0
    offset: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")

    def describe(self) -> str:
        return f"scale {self.scale:g}, offset {self.offset[0]},{self.offset[1]}"


def place(frames: Tensor, height: int, width: int, placement: Placement) -> Tensor:
    """``[T, C, h, w]`` frames -> straight RGBA ``[T, 4, height, width]`` placed on a transparent canvas.

    Resizing is bilinear (antialiased when shrinking) on premultiplied colour, so transparent pixels
    never bleed their colour into the edges. Pixels outside the frames are transparent.
    """
    rgba = frames if frames.shape[1] == 4 else torch.cat([frames, torch.ones_like(frames[:, :1])], 1)
    size = (max(1, round(rgba.shape[-2] * placement.scale)), max(1, round(rgba.shape[-1] * placement.scale)))
    if size != tuple(rgba.shape[-2:]):
        resized = F.interpolate(
            premultiply(rgba).float(),
            size=size,
            mode="bilinear",
            align_corners=False,
            antialias=placement.scale < 1,
        )
        rgba = unpremultiply(resized.clamp(0, 1))
    canvas = torch.zeros(rgba.shape[0], 4, height, width, dtype=rgba.dtype)
    x, y = placement.offset
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + size[0], height), min(x + size[1], width)
    if bottom > top and right > left:
        canvas[:, :, top:bottom, left:right] = rgba[:, :, top - y : bottom - y, left - x : right - x]
    return canvas
