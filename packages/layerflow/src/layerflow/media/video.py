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

from .frames import from_uint8, to_uint8

WEBM_CODEC = "libvpx-vp9"
WEBM_PIXEL_FORMAT = "yuva420p"
MP4_CODEC = "libx264"
ALPHA_FORMATS = ("rgba", "bgra", "argb", "abgr", "gbrap", "ya8")


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


def read_video(path: str | os.PathLike[str]) -> tuple[torch.Tensor, float]:
    """A video file -> (``[T, C, H, W]`` in [0, 1], fps). C = 4 for streams with alpha (VP9/yuva), else 3."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 8)
            decoder = (
                cast(av.VideoCodecContext, av.codec.CodecContext.create(WEBM_CODEC, "r"))
                if stream.codec_context.name in ("vp9", WEBM_CODEC)
                else stream.codec_context
            )
            # demux() ends with an empty packet, which flushes the decoder.
            decoded = [frame for packet in container.demux(stream) for frame in decoder.decode(packet)]
    except av.error.FFmpegError as error:
        raise ValueError(f"cannot read video {path}: {error}") from error
    if not decoded:
        raise ValueError(f"{path} has no frames")
    has_alpha = any(
        frame.format.name in ALPHA_FORMATS or frame.format.name.startswith("yuva") for frame in decoded
    )
    fmt = "rgba" if has_alpha else "rgb24"
    return from_uint8(np.stack([frame.to_ndarray(format=fmt) for frame in decoded])), fps
