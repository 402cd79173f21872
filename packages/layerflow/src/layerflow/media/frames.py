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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from layerflow.atomic import atomic_directory
from layerflow.json_files import special_file

FrameMode = Literal["rgb", "rgba", "alpha"]
"""``"rgb"``: opaque colour; ``"rgba"``: colour + straight alpha; ``"alpha"``: a one-channel matte."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PNG_OPTIONS: Mapping[str, Any] = {"optimize": False, "compress_level": 4}
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_FRAME_NAME = re.compile(r"^(\d+)$")


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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: FFmpeg's pixel formats of a 16-bit PNG, by channel count (grey, grey + alpha, RGB, RGBA).
_DEEP_PNG_CHANNELS = {"gray16be": 1, "ya16be": 2, "rgb48be": 3, "rgba64be": 4}


@dataclass(frozen=True)
class DecodedImage:
    """One image file decoded at its own bit depth.

    Attributes:
        pixels: float32 ``[H, W, C]`` in [0, 1]; C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA.
        mode: the file's pixel layout as its decoder names it (PIL's mode, FFmpeg's 16-bit format).
        indices: a palette image without transparency: its raw indices (object-id masks) / 255.
    """

    pixels: np.ndarray
    mode: str
    indices: np.ndarray | None = None

    @property
    def has_alpha(self) -> bool:
        return self.pixels.shape[-1] in (2, 4)


def _is_16bit_png(path: Path) -> bool:
    """Whether the file's PNG header (IHDR: always the first chunk) declares 16 bits per sample."""
    with path.open("rb") as handle:
        head = handle.read(26)
    return len(head) == 26 and head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR" and head[24] == 16


def _decode_16bit_png(path: Path) -> DecodedImage:
    """A 16-bit PNG through FFmpeg, which keeps all 16 bits of every colour type (PIL truncates
    RGB, RGBA and grey + alpha to 8 bits) and turns a ``tRNS`` colour into an alpha channel."""
    import av

    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
    except (av.error.FFmpegError, StopIteration) as error:
        raise FrameError(f"cannot read frame {path}: cannot decode image ({error})") from error
    channels = _DEEP_PNG_CHANNELS.get(frame.format.name)
    if channels is None:
        raise FrameError(f"cannot read frame {path}: unexpected 16-bit PNG pixel format {frame.format.name}")
    rgba = frame.to_ndarray(format="rgba64le" if channels in (2, 4) else "rgb48le").astype(np.float32)
    pixels = rgba[..., [0, 3]] if channels == 2 else (rgba[..., :1] if channels == 1 else rgba)
    return DecodedImage(pixels / 65535.0, frame.format.name)


def decode_image(path: str | os.PathLike[str]) -> DecodedImage:
    """Any PNG/JPEG file decoded at its own bit depth (float32 ``[H, W, C]`` in [0, 1]).

    The one place that knows image modes: every reader of frames (CLI inputs, recompose, eval,
    training) comes here. 1-bit grey is 0/1; 16-bit PNGs of every colour type go through FFmpeg at
    full precision (PIL clips 16-bit grey to white in ``convert("RGB")`` and reads 16-bit colour at
    8 bits); a transparent colour or palette entry (``tRNS``) becomes an alpha channel.
    """
    path = Path(path)
    if kind := special_file(path):
        raise FrameError(f"{path}: is {kind}, not an image file")
    try:
        with Image.open(path) as opened:
            if opened.format == "PNG" and _is_16bit_png(path):
                return _decode_16bit_png(path)
            opened.load()
            image = opened.copy()
    except FileNotFoundError:
        raise FrameError(f"{path}: frame file is missing") from None
    except Image.DecompressionBombError as error:  # a few bytes that decode to gigabytes
        raise FrameError(f"cannot read frame {path}: {error}") from None
    except (OSError, SyntaxError) as error:
        raise FrameError(f"cannot read frame {path}: cannot decode image ({error})") from error
    transparency = "transparency" in image.info
    if image.mode == "1":
        return DecodedImage(np.asarray(image, dtype=np.float32)[..., None], image.mode)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):  # deep grey a PNG name hides (TIFF)
        scale = 1.0 if image.mode == "F" else 65535.0
        return DecodedImage(np.asarray(image, dtype=np.float32)[..., None] / scale, image.mode)
    if image.mode == "L" and not transparency:
        return DecodedImage(np.asarray(image, dtype=np.float32)[..., None] / 255.0, image.mode)
    if image.mode in ("L", "LA"):
        return DecodedImage(np.asarray(image.convert("LA"), dtype=np.float32) / 255.0, image.mode)
    if image.mode == "RGB" and not transparency:
        return DecodedImage(np.asarray(image, dtype=np.float32) / 255.0, image.mode)
    indices = np.asarray(image, dtype=np.float32) / 255.0 if image.mode == "P" and not transparency else None
    has_alpha = image.mode in ("RGBA", "PA") or transparency
    pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    return DecodedImage(pixels, image.mode, indices)


#: ITU-R 601 luma, the weights of PIL's ``convert("L")``: an RGB image given as a matte.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _alpha_array(image: DecodedImage) -> np.ndarray:
    """A one-channel matte ``[H, W]`` in [0, 1]: a grey image's values, an image with alpha its alpha
    (an RGBA matte with an all-opaque alpha carries the matte in its colour), an RGB image's luma.

    Palette images keep their raw indices (object-id masks): scaled by 255 they show up as an alpha
    that never exceeds a few steps, which the sample checks report instead of training on it.
    """
    if image.indices is not None:
        return image.indices
    pixels = image.pixels
    if image.has_alpha and (pixels[..., -1] < 1).any():
        return pixels[..., -1]
    if pixels.shape[-1] in (1, 2):
        return pixels[..., 0]
    return pixels[..., :3] @ _LUMA


def _to_array(image: DecodedImage, path: Path, mode: FrameMode) -> np.ndarray:
    """One decoded image as float32 ``[H, W, C]`` in [0, 1]: C = 3 (``rgb``), 4 (``rgba``) or 1."""
    if mode == "alpha":
        return _alpha_array(image)[..., None]
    pixels = image.pixels
    colour = np.repeat(pixels[..., :1], 3, -1) if pixels.shape[-1] <= 2 else pixels[..., :3]
    if mode == "rgb":
        return colour
    if not image.has_alpha:
        raise FrameError(
            f"{path}: no alpha channel (mode {image.mode}); expected an RGBA image (straight alpha)"
        )
    return np.concatenate([colour, pixels[..., -1:]], -1)


def read_images(files: Sequence[Path], mode: FrameMode | None = None) -> np.ndarray:
    """Image files of one size as float32 ``[T, H, W, C]`` in [0, 1] (C = 3, 4 or 1 by ``mode``).

    ``mode=None`` keeps what the files hold: ``"rgba"`` when any has alpha, ``"alpha"`` when all are
    grey, else ``"rgb"``.
    """
    images = [decode_image(path) for path in files]
    sizes = {f"{image.pixels.shape[1]}x{image.pixels.shape[0]}" for image in images}
    if len(sizes) > 1:
        raise FrameError(f"{files[0].parent}: frames have different sizes: {sorted(sizes)}")
    if mode is None:
        grey = all(image.pixels.shape[-1] == 1 for image in images)
        mode = "rgba" if any(image.has_alpha for image in images) else ("alpha" if grey else "rgb")
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
