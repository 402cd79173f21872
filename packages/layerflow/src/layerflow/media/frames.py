"""PNG frame sequences: ``0000.png, 0001.png, ...``; RGBA with straight alpha for transparent layers.

Frames in memory are float ``[T, C, H, W]`` in [0, 1] (C = 3 RGB, 4 RGBA, 1 alpha).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from layerflow.atomic import atomic_directory

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``[T, C, H, W]`` float in [0, 1] -> ``[T, H, W, C]`` uint8 (rounded, not truncated)."""
    if frames.dim() != 4 or frames.shape[1] not in _MODES:
        raise ValueError(f"frames must be [T, C, H, W] with C in {sorted(_MODES)}, got {tuple(frames.shape)}")
    return (
        (frames.detach().float().clamp(0, 1) * 255.0)
        .round()
        .to(torch.uint8)
        .permute(0, 2, 3, 1)
        .cpu()
        .numpy()
    )


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """``[T, H, W, C]`` uint8 -> ``[T, C, H, W]`` float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 255.0


def write_png_sequence(
    folder: str | os.PathLike[str], frames: torch.Tensor, *, overwrite: bool = False
) -> Path:
    """Write ``frames`` as ``folder/0000.png ...`` (mode L, RGB or RGBA by channel count), atomically."""
    array = to_uint8(frames)
    with atomic_directory(folder, overwrite=overwrite) as temporary:
        write_png_frames(temporary, array)
    return Path(folder)


def write_png_frames(folder: Path, array: np.ndarray) -> None:
    """``[T, H, W, C]`` uint8 into an existing (temporary) folder."""
    mode = _MODES[array.shape[-1]]
    for index, frame in enumerate(array):
        image = Image.fromarray(frame[..., 0] if mode == "L" else frame, mode=mode)
        image.save(folder / f"{index:04d}.png", optimize=False, compress_level=4)


def frame_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Frame files of a folder in numeric order; a clear error for an empty or missing folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"frame folder {folder} does not exist")
    files = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")]
    if not files:
        raise ValueError(f"no frames ({', '.join(FRAME_SUFFIXES)}) in {folder}")

    def key(path: Path) -> tuple[int, str]:
        digits = re.findall(r"\d+", path.stem)
        return (int(digits[-1]) if digits else -1, path.name)

    return sorted(files, key=key)


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read frame {path}: {error}") from error


def read_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """One image file as a one-frame sequence ``[1, C, H, W]``."""
    return _stack([_open(Path(path))], Path(path))


def read_png_sequence(folder: str | os.PathLike[str]) -> torch.Tensor:
    """Read a frame folder -> ``[T, C, H, W]``; C = 4 when any frame has alpha, else 3 (1 for greyscale-only)."""
    return _stack([_open(path) for path in frame_files(folder)], Path(folder))


def _stack(images: list[Image.Image], folder: Path) -> torch.Tensor:
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        raise ValueError(f"frames in {folder} have different sizes: {sorted(sizes)}")
    has_alpha = any(image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info for image in images)
    greyscale = all(image.mode in ("L", "1", "I;16") for image in images)
    mode = "RGBA" if has_alpha else ("L" if greyscale else "RGB")
    array = np.stack([np.asarray(image.convert(mode)) for image in images])
    if array.ndim == 3:
        array = array[..., None]
    return from_uint8(array)
