"""Layer frames for the datasets, read on demand through :mod:`layerflow.media` as float32 ``[n, H, W, C]``.

The datasets pick frame indices first, then decode only those. Reading never repairs anything: a
problem raises :class:`~layerflow.media.FrameError` naming the file, which the datasets turn into a
:class:`~layerflow.data.errors.SampleError` with the sample id.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from layerflow.media import VIDEO_SUFFIXES, FrameError, FrameMode, decode_video, list_frame_files, read_images

#: Frames decoded at once when every frame of a layer is checked (bounds the memory of long clips).
CHECK_CHUNK = 16


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
        unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
        return read_images([self.files[i] for i in unique], self.mode)[inverse]

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
            self._frames, self._fps = decode_video(self.path, self.mode)
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


def read_every_frame(name: str, sequence: FrameSequence) -> None:
    """Decode every frame of layer ``name`` (``dataset.validate``), in chunks; frames of one size."""
    size = None
    for start in range(0, len(sequence), CHECK_CHUNK):
        frames = sequence.read(range(start, min(start + CHECK_CHUNK, len(sequence))))
        if size is not None and frames.shape[1:3] != size:
            raise FrameError(
                f"layer {name!r}: frames from {start} on are {frames.shape[2]}x{frames.shape[1]}, "
                f"earlier ones {size[1]}x{size[0]}"
            )
        size = frames.shape[1:3]


def open_layer(folder_or_video: Path, mode: FrameMode) -> ImageSequence | VideoSequence:
    """A layer stored as a frame folder or as a video file."""
    if folder_or_video.suffix.lower() in VIDEO_SUFFIXES:
        return VideoSequence(folder_or_video, mode)
    return ImageSequence(list_frame_files(folder_or_video), mode)
