"""Frame folders (``0000.png, 0001.png, ...``) and image files; RGBA with straight alpha for transparency.

The one reader of frames for the whole package: pipeline inputs, training datasets and evaluation.
Reading never repairs anything: a missing or undecodable file, a layer that should carry alpha but
does not, or a gap in the frame numbering raises :class:`FrameError` naming the file or folder.

Frames are float32 in [0, 1]: ``[T, H, W, C]`` numpy arrays as read (C = 3 RGB, 4 RGBA, 1 alpha),
``[T, C, H, W]`` tensors for the pipeline and the metrics (:func:`frames_to_tensor`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from layerflow.atomic import atomic_directory

FrameMode = Literal["rgb", "rgba", "alpha"]
"""``"rgb"``: opaque colour; ``"rgba"``: colour + straight alpha; ``"alpha"``: a one-channel matte."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PNG_OPTIONS: Mapping[str, Any] = {"optimize": False, "compress_level": 4}
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_FRAME_NAME = re.compile(r"^(\d+)$")
_GREY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")


class FrameError(ValueError):
    """A frame file, frame folder or video that cannot be used; the message names the path and the problem."""


# ------------------------------------------------------------------------------------------ reading
def list_frame_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The frame files ``0000.png, 0001.png, ...`` of a folder, checked to be numbered without gaps."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FrameError(f"{folder}: frame folder is missing")
    numbered: dict[int, Path] = {}
    for path in folder.iterdir():
        match = _FRAME_NAME.match(path.stem)
        if path.suffix.lower() in IMAGE_SUFFIXES and match:
            number = int(match.group(1))
            if number in numbered:
                raise FrameError(
                    f"{folder}: frame {number} exists twice ({numbered[number].name}, {path.name})"
                )
            numbered[number] = path
    if not numbered:
        raise FrameError(f"{folder}: no frames (expected 0000.png, 0001.png, ...)")
    missing = sorted(set(range(max(numbered) + 1)) - set(numbered))
    if missing:
        raise FrameError(
            f"{folder}: frames {missing[:5]} are missing (numbering must be contiguous from 0, without gaps)"
        )
    return [numbered[i] for i in range(len(numbered))]


def find_file(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    """``folder/<stem><suffix>`` for the first of ``suffixes`` that names a file, else ``None``."""
    return next((folder / f"{stem}{s}" for s in suffixes if (folder / f"{stem}{s}").is_file()), None)


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise FrameError(f"{path}: frame file is missing") from None
    except (OSError, SyntaxError) as error:
        raise FrameError(f"cannot read frame {path}: cannot decode image ({error})") from error


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


_DEEP_GREY = ("I;16", "I;16B", "I;16L", "I")


def decode_image(image: Image.Image) -> np.ndarray:
    """Any decoded image as float32 ``[H, W, C]`` in [0, 1] at its own bit depth: C = 1 grey,
    2 grey + alpha, 3 RGB, 4 RGBA.

    The one place that knows PNG's modes: 1-bit grey is 0/1, 16-bit grey is scaled by 65535 (PIL's
    ``convert("RGB")`` clips it to white), a transparent colour or palette entry (``tRNS``) becomes
    an alpha channel. PIL reads 16-bit RGB(A) and grey + alpha at 8 bits (within 1/255).
    """
    transparency = "transparency" in image.info
    if image.mode == "1":
        return np.asarray(image, dtype=np.float32)[..., None]
    if image.mode in _DEEP_GREY or image.mode == "F":
        scale = 1.0 if image.mode == "F" else 65535.0
        grey = np.asarray(image, dtype=np.float32) / scale
        if not transparency:
            return grey[..., None]
        alpha = np.asarray(image) != image.info["transparency"]
        return np.stack([grey, alpha.astype(np.float32)], -1)
    if image.mode == "L" and not transparency:
        return np.asarray(image, dtype=np.float32)[..., None] / 255.0
    if image.mode in ("L", "LA"):
        return np.asarray(image.convert("LA"), dtype=np.float32) / 255.0
    if image.mode == "RGB" and not transparency:
        return np.asarray(image, dtype=np.float32) / 255.0
    return np.asarray(image.convert("RGBA" if _has_alpha(image) else "RGB"), dtype=np.float32) / 255.0


def _alpha_array(image: Image.Image) -> np.ndarray:
    """A one-channel matte ``[H, W]`` in [0, 1]: a grey image's values, an image with alpha its alpha
    (an RGBA matte with an all-opaque alpha carries the matte in its colour), an RGB image's luma.

    Palette images keep their raw indices (object-id masks): scaled by 255 they show up as an alpha
    that never exceeds a few steps, which the sample checks report instead of training on it.
    """
    if image.mode == "P" and "transparency" not in image.info:
        return np.asarray(image, dtype=np.float32) / 255.0
    decoded = decode_image(image)
    if decoded.shape[-1] in (2, 4) and (decoded[..., -1] < 1).any():
        return decoded[..., -1]
    if decoded.shape[-1] in (1, 2):
        return decoded[..., 0]
    return np.asarray(image.convert("RGB").convert("L"), dtype=np.float32) / 255.0


def _to_array(image: Image.Image, path: Path, mode: FrameMode) -> np.ndarray:
    """One decoded image as float32 ``[H, W, C]`` in [0, 1]: C = 3 (``rgb``), 4 (``rgba``) or 1."""
    if mode == "alpha":
        return _alpha_array(image)[..., None]
    decoded = decode_image(image)
    grey = decoded.shape[-1] <= 2
    colour = np.repeat(decoded[..., :1], 3, -1) if grey else decoded[..., :3]
    if mode == "rgb":
        return colour
    if decoded.shape[-1] not in (2, 4):
        raise FrameError(
            f"{path}: no alpha channel (mode {image.mode}); expected an RGBA image (straight alpha)"
        )
    return np.concatenate([colour, decoded[..., -1:]], -1)


def read_images(files: Sequence[Path], mode: FrameMode | None = None) -> np.ndarray:
    """Image files of one size as float32 ``[T, H, W, C]`` in [0, 1] (C = 3, 4 or 1 by ``mode``).

    ``mode=None`` keeps what the files hold: ``"rgba"`` when any has alpha, ``"alpha"`` when all are
    grey, else ``"rgb"``.
    """
    images = [_open(path) for path in files]
    sizes = {f"{image.width}x{image.height}" for image in images}
    if len(sizes) > 1:
        raise FrameError(f"{files[0].parent}: frames have different sizes: {sorted(sizes)}")
    if mode is None:
        grey = all(image.mode in _GREY_MODES for image in images)
        mode = "rgba" if any(_has_alpha(image) for image in images) else ("alpha" if grey else "rgb")
    return np.stack([_to_array(image, path, mode) for image, path in zip(images, files)])


def read_image(path: str | os.PathLike[str], mode: FrameMode | None = None) -> np.ndarray:
    """One image file as float32 ``[H, W, C]`` in [0, 1] (``mode`` as in :func:`read_images`)."""
    return read_images([Path(path)], mode)[0]


def frames_to_tensor(array: np.ndarray) -> torch.Tensor:
    """``[T, H, W, C]`` numpy to ``[T, C, H, W]`` float32 torch."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))).float()


def quantize_8bit(frames: torch.Tensor) -> torch.Tensor:
    """``[T, C, H, W]`` frames as 8-bit PNG files of them read back (float32 multiples of 1/255)."""
    return frames_to_tensor(to_uint8(frames).astype(np.float32) / 255.0)


def read_png_sequence(folder: str | os.PathLike[str], mode: FrameMode | None = None) -> torch.Tensor:
    """A frame folder as ``[T, C, H, W]`` float32 in [0, 1] (``mode`` as in :func:`read_images`)."""
    return frames_to_tensor(read_images(list_frame_files(folder), mode))


# ------------------------------------------------------------------------------------------ writing
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


def write_frames(
    folder: Path, array: np.ndarray, *, suffix: str = ".png", options: Mapping[str, Any] = PNG_OPTIONS
) -> None:
    """``[T, H, W, C]`` uint8 as ``folder/0000<suffix> ...`` (mode L, RGB or RGBA by C); makes ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    mode = _MODES[array.shape[-1]]
    for index, frame in enumerate(array):
        image = Image.fromarray(frame[..., 0] if mode == "L" else frame, mode=mode)
        image.save(folder / f"{index:04d}{suffix}", **options)


def write_png_sequence(
    folder: str | os.PathLike[str], frames: torch.Tensor, *, overwrite: bool = False
) -> Path:
    """Write ``frames`` as ``folder/0000.png ...`` (mode L, RGB or RGBA by channel count), atomically."""
    array = to_uint8(frames)
    with atomic_directory(folder, overwrite=overwrite) as temporary:
        write_frames(temporary, array)
    return Path(folder)
