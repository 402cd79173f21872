"""Previews: layers side by side, transparent ones composited over a checkerboard so alpha is visible."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from layerflow.atomic import atomic_file
from layerflow.compositing import over

from .frames import to_uint8


def checkerboard(height: int, width: int, cell: int = 8) -> torch.Tensor:
    """``[3, H, W]`` light/dark grey checkerboard."""
    ys = torch.arange(height).div(cell, rounding_mode="floor")
    xs = torch.arange(width).div(cell, rounding_mode="floor")
    board = ((ys[:, None] + xs[None, :]) % 2).float()
    return (0.6 + 0.2 * board).expand(3, height, width)


def over_checkerboard(frames: torch.Tensor, cell: int = 8) -> torch.Tensor:
    """``[T, C, H, W]`` -> ``[T, 3, H, W]``: RGBA composited over a checkerboard, RGB unchanged."""
    if frames.shape[1] == 3:
        return frames.float()
    board = checkerboard(frames.shape[-2], frames.shape[-1], cell).to(frames.device)
    alpha = frames[:, 3:].float()
    return over(frames[:, :3].float(), alpha, board)


def contact_sheet(layers: Sequence[torch.Tensor], columns: int = 8, gap: int = 2) -> torch.Tensor:
    """One row per layer, ``columns`` evenly spaced frames per row -> ``[3, H', W']`` in [0, 1]."""
    if not layers:
        raise ValueError("a contact sheet needs at least one layer")
    frames = layers[0].shape[0]
    height, width = layers[0].shape[-2:]
    count = min(columns, frames)
    picks = [round(i * (frames - 1) / max(count - 1, 1)) for i in range(count)]
    sheet = torch.ones(3, len(layers) * (height + gap) - gap, len(picks) * (width + gap) - gap)
    for row, layer in enumerate(layers):
        shown = over_checkerboard(layer)
        for column, index in enumerate(picks):
            top, left = row * (height + gap), column * (width + gap)
            sheet[:, top : top + height, left : left + width] = shown[index]
    return sheet


def write_contact_sheet(
    path: str | os.PathLike[str], layers: Sequence[torch.Tensor], columns: int = 8
) -> Path:
    image = to_uint8(contact_sheet(layers, columns).unsqueeze(0))[0]
    with atomic_file(path) as temporary:
        Image.fromarray(image, mode="RGB").save(temporary, format="PNG")
    return Path(path)


def write_preview_gif(
    path: str | os.PathLike[str], layers: Sequence[torch.Tensor], fps: int = 8, gap: int = 2
) -> Path:
    """An animated GIF whose every frame shows all layers side by side (alpha over a checkerboard)."""
    shown = [over_checkerboard(layer) for layer in layers]
    frames, _, height, width = shown[0].shape
    strip = torch.ones(frames, 3, height, len(shown) * (width + gap) - gap)
    for column, layer in enumerate(shown):
        strip[..., column * (width + gap) : column * (width + gap) + width] = layer
    images = [Image.fromarray(np.ascontiguousarray(frame), mode="RGB") for frame in to_uint8(strip)]
    with atomic_file(path) as temporary:
        images[0].save(
            temporary,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=round(1000 / fps),
            loop=0,
        )
    return Path(path)
