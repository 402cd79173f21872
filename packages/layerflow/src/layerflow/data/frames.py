"""Reading layer frames from image files and video files (PyAV), as float32 ``[H, W, C]`` in [0, 1].

Reading never repairs anything: a file that cannot be decoded, a layer that should carry alpha but
does not, or a gap in the frame numbering raises :class:`FrameError` naming the file; the datasets
turn it into a :class:`~layerflow.data.errors.SampleError` with the sample id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image

FrameMode = Literal["rgb", "rgba", "alpha"]
"""``"rgb"``: opaque colour; ``"rgba"``: colour + straight alpha; ``"alpha"``: a one-channel matte."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".webm", ".mp4", ".mkv", ".mov", ".avi")
_FRAME_NAME = re.compile(r"^(\d+)$")


class FrameError(ValueError):
    """A frame file or video that cannot be used; the message names the path and the problem."""


def _alpha_array(image: Image.Image, path: Path) -> np.ndarray:
    """A one-channel matte scaled to [0, 1] by its bit depth.

    Palette images keep their raw indices (object-id masks): scaled by 255 they show up as an alpha
    that never exceeds a few steps, which the sample checks report instead of training on it.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode == "1":
        return np.asarray(image, dtype=np.float32)
    if image.mode == "P":
        return np.asarray(image, dtype=np.float32) / 255.0
    if image.mode in ("RGBA", "LA"):
        raise FrameError(f"{path}: an alpha matte must be a grey image, got mode {image.mode}")
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def read_image(path: Path, mode: FrameMode) -> np.ndarray:
    """One frame as float32 ``[H, W, C]`` in [0, 1] (C = 3, 4 or 1 by ``mode``)."""
    try:
        with Image.open(path) as image:
            image.load()
            if mode == "alpha":
                return _alpha_array(image, path)[..., None]
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            if mode == "rgba" and not has_alpha:
                raise FrameError(f"{path}: expected an RGBA image (straight alpha), got mode {image.mode}")
            converted = image.convert("RGBA" if mode == "rgba" else "RGB")
            return np.asarray(converted, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise FrameError(f"{path}: frame file is missing") from None
    except (OSError, SyntaxError) as error:
        raise FrameError(f"{path}: cannot decode image ({error})") from error


def read_video(path: Path, mode: FrameMode) -> tuple[np.ndarray, float]:
    """All frames of a video as float32 ``[T, H, W, C]`` in [0, 1], and its frame rate.

    ``"rgba"`` needs an alpha plane: VP9 alpha lives in a side channel that only the libvpx decoder
    reads, so VP9 streams are decoded with ``libvpx-vp9`` rather than FFmpeg's native decoder.
    """
    import av

    if not path.is_file():
        raise FrameError(f"{path}: video file is missing")
    pixel_format = {"rgb": "rgb24", "rgba": "rgba", "alpha": "gray"}[mode]
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.base_rate or Fraction(0)
            decoder = stream.codec_context
            if mode == "rgba" and stream.codec_context.name == "vp9":
                decoder = av.CodecContext.create("libvpx-vp9", "r")
            for packet in container.demux(stream):
                for frame in decoder.decode(packet):
                    if mode == "rgba" and not any(c.is_alpha for c in frame.format.components):
                        raise FrameError(
                            f"{path}: expected a video with alpha, got pixel format {frame.format.name}"
                        )
                    frames.append(frame.to_ndarray(format=pixel_format))
    except av.error.FFmpegError as error:
        raise FrameError(f"{path}: cannot decode video ({error})") from error
    if not frames:
        raise FrameError(f"{path}: video has no frames")
    array = np.stack(frames).astype(np.float32) / 255.0
    return (array[..., None] if mode == "alpha" else array), float(rate)


def video_fps(path: Path) -> float:
    """The frame rate a video container declares (no decoding)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return float(stream.average_rate or stream.base_rate or 0)
    except (av.error.FFmpegError, IndexError) as error:
        raise FrameError(f"{path}: cannot open video ({error})") from error


def list_frame_files(folder: Path) -> list[Path]:
    """The frame files ``0000.png, 0001.png, ...`` of a folder, checked to be numbered without gaps."""
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
        raise FrameError(f"{folder}: no frame files (expected 0000.png, 0001.png, ...)")
    missing = sorted(set(range(max(numbered) + 1)) - set(numbered))
    if missing:
        raise FrameError(f"{folder}: frames {missing[:5]} are missing (numbering must be contiguous from 0)")
    return [numbered[i] for i in range(len(numbered))]


class FrameSequence(Protocol):
    """A layer's frames, read on demand: the datasets pick indices first, then read only those."""

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` as float32 ``[n, H, W, C]``."""
        ...

    def paths(self) -> list[Path]:
        """The files behind the sequence (for dataset fingerprints)."""
        ...


class ImageSequence:
    """Frames stored one image file each."""

    def __init__(self, files: Sequence[Path], mode: FrameMode):
        self.files = list(files)
        self.mode: FrameMode = mode

    def __len__(self) -> int:
        return len(self.files)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        cache: dict[int, np.ndarray] = {}
        for i in indices:
            if i not in cache:
                cache[i] = read_image(self.files[i], self.mode)
        shapes = {frame.shape for frame in cache.values()}
        if len(shapes) > 1:
            raise FrameError(f"{self.files[0].parent}: frames differ in size {sorted(shapes)}")
        return np.stack([cache[i] for i in indices])

    def paths(self) -> list[Path]:
        return self.files


class VideoSequence:
    """Frames of one video file, decoded on first use (videos cannot be read by index cheaply)."""

    def __init__(self, path: Path, mode: FrameMode):
        self.path = path
        self.mode: FrameMode = mode
        self._frames: np.ndarray | None = None
        self._fps = 0.0

    def _decoded(self) -> np.ndarray:
        if self._frames is None:
            self._frames, self._fps = read_video(self.path, self.mode)
        return self._frames

    @property
    def fps(self) -> float:
        self._decoded()
        return self._fps

    def __len__(self) -> int:
        return len(self._decoded())

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return self._decoded()[list(indices)]

    def paths(self) -> list[Path]:
        return [self.path]


def open_layer(folder_or_video: Path, mode: FrameMode) -> ImageSequence | VideoSequence:
    """A layer stored as a frame folder or as a video file."""
    if folder_or_video.suffix.lower() in VIDEO_SUFFIXES:
        return VideoSequence(folder_or_video, mode)
    return ImageSequence(list_frame_files(folder_or_video), mode)
