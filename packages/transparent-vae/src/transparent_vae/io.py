"""Read and write straight-alpha RGBA PNGs and PNG sequences (8 bit per channel).

Tensors are channel-first in ``[0, 1]``: an image is ``[4, H, W]``, a sequence ``[4, T, H, W]`` (the
video layout of the VAEs). PNG stores straight (unpremultiplied) alpha, which is also what this
package uses everywhere, so nothing is multiplied on the way in or out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ._files import atomic_write

PathLike = str | os.PathLike[str]


def read_rgba(path: PathLike) -> torch.Tensor:
    """One PNG (any mode Pillow can convert; no alpha means opaque) -> ``[4, H, W]`` float in ``[0, 1]``."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"RGBA image {file} does not exist")
    with Image.open(file) as image:
        array = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def write_rgba(rgba: torch.Tensor, path: PathLike) -> Path:
    """``[4, H, W]`` straight RGBA in ``[0, 1]`` -> an 8-bit RGBA PNG, written atomically."""
    if rgba.ndim != 3 or rgba.shape[0] != 4:
        raise ValueError(f"write_rgba expects [4, H, W], got {tuple(rgba.shape)}")
    array = (rgba.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(array)  # H x W x 4 uint8 is RGBA
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def read_rgba_sequence(source: PathLike | Sequence[PathLike], pattern: str = "*.png") -> torch.Tensor:
    """A folder of PNGs (natural order: ``frame_2`` before ``frame_10``) or a list of files -> ``[4, T, H, W]``."""
    if isinstance(source, str | os.PathLike):
        folder = Path(source)
        if not folder.is_dir():
            raise NotADirectoryError(f"RGBA sequence folder {folder} does not exist")
        files = sorted(folder.glob(pattern), key=_natural_key)
        if not files:
            raise FileNotFoundError(f"no files matching {pattern!r} in {folder}")
    else:
        files = [Path(p) for p in source]
        if not files:
            raise ValueError("read_rgba_sequence: empty list of files")
    frames: list[torch.Tensor] = []
    for file in files:
        frame = read_rgba(file)
        if frames and frame.shape != frames[0].shape:
            raise ValueError(
                f"{file} is {frame.shape[2]}x{frame.shape[1]}, but {files[0]} is {frames[0].shape[2]}x{frames[0].shape[1]}"
            )
        frames.append(frame)
    return torch.stack(frames, dim=1)


def write_rgba_sequence(rgba: torch.Tensor, folder: PathLike, name: str = "frame_{:05d}.png") -> list[Path]:
    """``[4, T, H, W]`` straight RGBA -> one PNG per frame in ``folder`` (each written atomically)."""
    if rgba.ndim != 4 or rgba.shape[0] != 4:
        raise ValueError(f"write_rgba_sequence expects [4, T, H, W], got {tuple(rgba.shape)}")
    return [write_rgba(rgba[:, t], Path(folder) / name.format(t)) for t in range(rgba.shape[1])]
