"""Video files through PyAV: WebM VP9 and ProRes 4444 (both keep alpha) and H.264 MP4 (opaque only).

Each :data:`VIDEO_FORMATS` entry names its container suffix, codec and pixel formats; a layer with
alpha gets the format's alpha pixel format, an opaque one its opaque pixel format. H.264 has no
alpha, so MP4 holds opaque layers only.

VP9 keeps alpha in a side channel that only ``libvpx-vp9`` encodes (pixel format ``yuva420p``) and
only the ``libvpx-vp9`` DECODER returns; FFmpeg's native ``vp9`` decoder silently drops it. So
reading always picks the libvpx decoder for VP9 streams. ProRes 4444 (``prores_ks``, profile 4444,
``yuva444p10le``) carries a 16-bit alpha plane that FFmpeg's native decoder returns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
import torch

from layerflow.atomic import atomic_file
from layerflow.json_files import special_file

from .frames import (
    IMAGE_SUFFIXES,
    FrameError,
    FrameMode,
    frames_to_tensor,
    read_images,
    read_png_sequence,
    to_uint8,
)


@dataclass(frozen=True)
class VideoFormat:
    """How one video format is written: container suffix, encoder, pixel formats, encoder options."""

    suffix: str
    container: str
    codec: str
    rgb_pixel_format: str
    rgba_pixel_format: str | None  # None: the format cannot hold alpha
    options: Mapping[str, str] = field(default_factory=dict)
    even_size: bool = False  # chroma-subsampled encoders that refuse odd sizes


VIDEO_FORMATS: Mapping[str, VideoFormat] = {
    "webm": VideoFormat(
        ".webm", "webm", "libvpx-vp9", "yuv420p", "yuva420p", {"crf": "20", "b": "0", "auto-alt-ref": "0"}
    ),
    "prores": VideoFormat(
        ".mov",
        "mov",
        "prores_ks",
        "yuv444p10le",
        "yuva444p10le",
        {"profile": "4444", "vendor": "apl0", "alpha_bits": "16"},
    ),
    "mp4": VideoFormat(".mp4", "mp4", "libx264", "yuv420p", None, {"crf": "18"}, even_size=True),
}
WEBM_CODEC = VIDEO_FORMATS["webm"].codec
logger = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".webm", ".mp4", ".mkv", ".mov", ".avi")
_FORMATS = {"rgb": "rgb24", "rgba": "rgba", "alpha": "gray"}
_DEEP_FORMATS = {"rgb": "rgb48le", "rgba": "rgba64le", "alpha": "gray16le"}


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


def write_video(
    path: str | os.PathLike[str],
    frames: torch.Tensor,
    fps: int = 8,
    *,
    format: str,
    options: Mapping[str, str] | None = None,
) -> Path:
    """RGB ``[T, 3, H, W]`` or RGBA ``[T, 4, H, W]`` frames in [0, 1] -> a video file, written atomically.

    ``format`` is a :data:`VIDEO_FORMATS` key; RGBA keeps its alpha (colour channels written as
    given, straight or premultiplied). ``options`` override the format's encoder options.
    """
    if format not in VIDEO_FORMATS:
        raise ValueError(f"unknown video format {format!r}; expected one of {sorted(VIDEO_FORMATS)}")
    spec = VIDEO_FORMATS[format]
    channels = frames.shape[1] if frames.dim() == 4 else None
    if channels not in (3, 4):
        raise ValueError(f"{format} needs RGB or RGBA frames [T, 3|4, H, W], got {tuple(frames.shape)}")
    pixel_format = spec.rgba_pixel_format if channels == 4 else spec.rgb_pixel_format
    if pixel_format is None:
        raise ValueError(f"{format} cannot hold alpha: it needs RGB frames [T, 3, H, W], got RGBA")
    height, width = frames.shape[-2:]
    if spec.even_size and (height % 2 or width % 2):
        raise ValueError(f"{format} ({spec.codec}) needs even frame sizes, got {width}x{height}")
    _require_encoder(spec.codec, pixel_format)
    array = to_uint8(frames)
    source_format = "rgba" if channels == 4 else "rgb24"
    with atomic_file(path) as temporary, av.open(str(temporary), "w", format=spec.container) as container:
        stream = container.add_stream(spec.codec, rate=Fraction(fps))
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        stream.options = {**spec.options, **(options or {})}
        for frame in array:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=source_format)
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def write_webm_rgba(
    path: str | os.PathLike[str], frames: torch.Tensor, fps: int = 8, *, crf: int = 20
) -> Path:
    """Straight-alpha RGBA ``[T, 4, H, W]`` -> VP9 WebM with an alpha channel, written atomically."""
    if frames.shape[1] != 4:
        raise ValueError(f"WebM with alpha needs RGBA frames [T, 4, H, W], got {tuple(frames.shape)}")
    return write_video(path, frames, fps, format="webm", options={"crf": str(crf)})


def write_prores_rgba(path: str | os.PathLike[str], frames: torch.Tensor, fps: int = 8) -> Path:
    """RGBA ``[T, 4, H, W]`` -> ProRes 4444 ``.mov`` with alpha (``yuva444p10le``), written atomically."""
    if frames.shape[1] != 4:
        raise ValueError(f"ProRes 4444 with alpha needs RGBA frames [T, 4, H, W], got {tuple(frames.shape)}")
    return write_video(path, frames, fps, format="prores")


def write_mp4(path: str | os.PathLike[str], frames: torch.Tensor, fps: int = 8, *, crf: int = 18) -> Path:
    """Opaque RGB ``[T, 3, H, W]`` -> H.264 MP4 (yuv420p, plays everywhere), written atomically."""
    if frames.shape[1] != 3:
        raise ValueError(f"MP4 needs RGB frames [T, 3, H, W], got {tuple(frames.shape)}")
    return write_video(path, frames, fps, format="mp4", options={"crf": str(crf)})


def _rate(stream: av.video.stream.VideoStream) -> float:
    return float(stream.average_rate or stream.base_rate or 0)


def video_fps(path: str | os.PathLike[str]) -> float:
    """The frame rate a video container declares (no decoding); 0 when it declares none."""
    try:
        with av.open(str(path)) as container:
            return _rate(container.streams.video[0])
    except (av.error.FFmpegError, IndexError) as error:
        raise FrameError(f"{path}: cannot open video ({error})") from error


def _declared_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float
) -> tuple[int, int] | None:
    """The frame count a video's header promises and how many fewer still decode complete: the
    stream's count exactly, else its duration times its rate, give or take a rounded frame;
    ``None`` when it declares neither."""
    if stream.frames:
        return stream.frames, 0
    if container.duration and fps:
        return round(container.duration / av.time_base * fps), 1
    return None


def decode_video(
    path: str | os.PathLike[str], mode: FrameMode | None = None, *, partial: bool = False
) -> tuple[np.ndarray, float]:
    """All frames of a video as float32 ``[T, H, W, C]`` in [0, 1], and its frame rate.

    ``mode=None`` keeps what the stream holds: ``"rgba"`` when its frames carry alpha, else ``"rgb"``;
    ``"rgba"`` requires alpha in every frame. Fewer frames than the header declares (a truncated
    file) is an error, never a silently shorter clip, unless the caller asked for fewer frames
    (``partial``: the frames that decode, with a warning).
    """
    path = Path(path)
    if kind := special_file(path):
        raise FrameError(f"{path}: is {kind}, not a video file")
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
            declared = _declared_frames(container, stream, fps)
            # demux() ends with an empty packet, which flushes the decoder.
            decoded = [frame for packet in container.demux(stream) for frame in decoder.decode(packet)]
    except av.error.FFmpegError as error:
        raise FrameError(f"{path}: cannot decode video ({error})") from error
    if not decoded:
        raise FrameError(f"{path}: video has no frames")
    if declared is not None and len(decoded) < declared[0] - declared[1]:
        problem = (
            f"{path}: video is truncated or damaged: {len(decoded)} of the {declared[0]} frames its header "
            "declares decode"
        )
        if not partial:
            raise FrameError(problem)
        logger.warning("warning: %s; using those (fewer frames were asked for)", problem)
    opaque = [frame for frame in decoded if not any(c.is_alpha for c in frame.format.components)]
    if mode is None:
        mode = "rgb" if len(opaque) == len(decoded) else "rgba"
    if mode == "rgba" and opaque:
        raise FrameError(f"{path}: expected a video with alpha, got pixel format {opaque[0].format.name}")
    # Deeper than 8 bits (ProRes 4444 decodes to 12): convert at 16 bits, or swscale truncates.
    deep = any(c.bits > 8 for c in decoded[0].format.components)
    pixel_format = (_DEEP_FORMATS if deep else _FORMATS)[mode]
    scale = 65535.0 if deep else 255.0
    array = np.stack([frame.to_ndarray(format=pixel_format) for frame in decoded]).astype(np.float32) / scale
    return (array[..., None] if mode == "alpha" else array), fps


def read_video(
    path: str | os.PathLike[str], mode: FrameMode | None = None, *, partial: bool = False
) -> tuple[torch.Tensor, float]:
    """A video file -> (``[T, C, H, W]`` float32 in [0, 1], fps); ``mode``, ``partial`` as in :func:`decode_video`."""
    frames, fps = decode_video(path, mode, partial=partial)
    return frames_to_tensor(frames), fps


def read_clip(
    path: str | os.PathLike[str], mode: FrameMode | None = None, *, partial: bool = False
) -> torch.Tensor:
    """A frame folder, a single image (one frame) or a video file -> ``[T, C, H, W]`` float32 in [0, 1].

    ``mode`` as in :func:`layerflow.media.read_images`, ``partial`` (a truncated video gives the
    frames that decode) as in :func:`decode_video`; problems raise :class:`FrameError` naming the path.
    """
    path = Path(path)
    if not path.exists():
        raise FrameError(f"{path}: does not exist")
    if path.is_dir():
        return read_png_sequence(path, mode)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return frames_to_tensor(read_images([path], mode))
    return read_video(path, mode, partial=partial)[0]
