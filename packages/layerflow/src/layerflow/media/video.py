"""Video files through PyAV: WebM VP9 with alpha for transparent layers, H.264 MP4 for opaque ones.

VP9 keeps alpha in a side channel that only ``libvpx-vp9`` encodes (pixel format ``yuva420p``) and
only the ``libvpx-vp9`` DECODER returns; FFmpeg's native ``vp9`` decoder silently drops it. So
reading always picks the libvpx decoder for VP9 streams.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
import torch

from layerflow.atomic import atomic_file

from .frames import FrameError, FrameMode, frames_to_tensor, to_uint8

WEBM_CODEC = "libvpx-vp9"
WEBM_PIXEL_FORMAT = "yuva420p"
MP4_CODEC = "libx264"
VIDEO_SUFFIXES = (".webm", ".mp4", ".mkv", ".mov", ".avi")


def _require_encoder(name: str, pixel_format: str) -> None:
    try:
        codec = av.codec.Codec(name, "w")
    except Exception as error:  # PyAV raises UnknownCodecError (a ValueError) or FFmpegError by build
        raise RuntimeError(
            f"this PyAV build has no {name} encoder ({error}); video writing is unavailable"
        ) from error
    formats = {f.name for f in codec.video_formats or ()}
    if pixel_format not in formats:
        raise RuntimeError(f"the {name} encoder of this PyAV build lacks pixel format {pixel_format}")


def _encode(
    path: Path, array: np.ndarray, fps: int, codec: str, pixel_format: str, options: dict[str, object]
) -> None:
    frames, height, width, channels = array.shape
    if codec == MP4_CODEC and (height % 2 or width % 2):
        raise ValueError(f"H.264 needs even frame sizes, got {width}x{height}")
    source_format = "rgba" if channels == 4 else "rgb24"
    with av.open(str(path), mode="w", format="webm" if path.suffix == ".webm" else "mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        stream.options = options
        for frame in array:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=source_format)
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_webm_rgba(
    path: str | os.PathLike[str], frames: torch.Tensor, fps: int = 8, *, crf: int = 20
) -> Path:
    """Straight-alpha RGBA ``[T, 4, H, W]`` -> VP9 WebM with an alpha channel, written atomically."""
    if frames.shape[1] != 4:
        raise ValueError(f"WebM with alpha needs RGBA frames [T, 4, H, W], got {tuple(frames.shape)}")
    _require_encoder(WEBM_CODEC, WEBM_PIXEL_FORMAT)
    with atomic_file(path) as temporary:
        options: dict[str, object] = {"crf": str(crf), "b": "0", "auto-alt-ref": "0"}
        _encode(temporary, to_uint8(frames), fps, WEBM_CODEC, WEBM_PIXEL_FORMAT, options)
    return Path(path)


def write_mp4(path: str | os.PathLike[str], frames: torch.Tensor, fps: int = 8, *, crf: int = 18) -> Path:
    """Opaque RGB ``[T, 3, H, W]`` -> H.264 MP4 (yuv420p, plays everywhere), written atomically."""
    if frames.shape[1] != 3:
        raise ValueError(f"MP4 needs RGB frames [T, 3, H, W], got {tuple(frames.shape)}")
    _require_encoder(MP4_CODEC, "yuv420p")
    with atomic_file(path) as temporary:
        _encode(temporary, to_uint8(frames), fps, MP4_CODEC, "yuv420p", {"crf": str(crf)})
    return Path(path)


def _rate(stream: av.video.stream.VideoStream) -> float:
    return float(stream.average_rate or stream.base_rate or 0)


def video_fps(path: str | os.PathLike[str]) -> float:
    """The frame rate a video container declares (no decoding); 0 when it declares none."""
    try:
        with av.open(str(path)) as container:
            return _rate(container.streams.video[0])
    except (av.error.FFmpegError, IndexError) as error:
        raise FrameError(f"{path}: cannot open video ({error})") from error


def decode_video(path: str | os.PathLike[str], mode: FrameMode | None = None) -> tuple[np.ndarray, float]:
    """All frames of a video as float32 ``[T, H, W, C]`` in [0, 1], and its frame rate.

    ``mode=None`` keeps what the stream holds: ``"rgba"`` when its frames carry alpha, else ``"rgb"``;
    ``"rgba"`` requires alpha in every frame.
    """
    path = Path(path)
    if not path.is_file():
        raise FrameError(f"{path}: video file is missing")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise FrameError(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = _rate(stream)
            decoder = (
                cast(av.VideoCodecContext, av.codec.CodecContext.create(WEBM_CODEC, "r"))
                if stream.codec_context.name in ("vp9", WEBM_CODEC)
                else stream.codec_context
            )
            # demux() ends with an empty packet, which flushes the decoder.
            decoded = [frame for packet in container.demux(stream) for frame in decoder.decode(packet)]
    except av.error.FFmpegError as error:
        raise FrameError(f"{path}: cannot decode video ({error})") from error
    if not decoded:
        raise FrameError(f"{path}: video has no frames")
    opaque = [frame for frame in decoded if not any(c.is_alpha for c in frame.format.components)]
    if mode is None:
        mode = "rgb" if len(opaque) == len(decoded) else "rgba"
    if mode == "rgba" and opaque:
        raise FrameError(f"{path}: expected a video with alpha, got pixel format {opaque[0].format.name}")
    pixel_format = {"rgb": "rgb24", "rgba": "rgba", "alpha": "gray"}[mode]
    array = np.stack([frame.to_ndarray(format=pixel_format) for frame in decoded]).astype(np.float32) / 255.0
    return (array[..., None] if mode == "alpha" else array), fps


def read_video(path: str | os.PathLike[str], mode: FrameMode | None = None) -> tuple[torch.Tensor, float]:
    """A video file -> (``[T, C, H, W]`` float32 in [0, 1], fps); ``mode`` as in :func:`decode_video`."""
    frames, fps = decode_video(path, mode)
    return frames_to_tensor(frames), fps
