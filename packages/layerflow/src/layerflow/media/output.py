"""The output folder (``manifest.json`` + per-layer PNG folders and videos + previews).

    OUT/manifest.json                   an :class:`~layerflow.media.manifest.OutputManifest`
    OUT/<layer>/0000.png ...            "png": RGBA for transparent layers, RGB otherwise
    OUT/<layer>.webm | .mov | .mp4      "webm" (VP9), "prores" (ProRes 4444), "mp4" (H.264, opaque only)
    OUT/preview.png, OUT/preview.gif

In memory layers are always straight alpha; the manifest says how the files store them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerflow.atomic import atomic_directory

from .frames import FrameError, FrameMode, read_png_sequence, to_uint8, write_frames
from .manifest import (
    ALPHA_MODES,
    FORMATS,
    MANIFEST_NAME,
    OUTPUT_TASKS,
    AlphaMode,
    ManifestLayer,
    OutputManifest,
)
from .preview import write_contact_sheet, write_preview_gif
from .video import VIDEO_FORMATS, read_video, write_video

DEFAULT_FORMATS: tuple[str, ...] = ("png", "webm", "mp4")


@dataclass(frozen=True)
class OutputLayer:
    """One layer to write: ``frames`` ``[T, C, H, W]`` in [0, 1], C = 4 (straight RGBA) or 3.

    ``source`` optionally says where the layer came from (kept, replaced, generated, recomposed).
    """

    name: str
    role: str
    frames: torch.Tensor
    prompt: str | None = None
    source: str | None = None

    @property
    def kind(self) -> FrameMode:
        return "rgba" if self.frames.shape[1] == 4 else "rgb"


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"png,webm"`` (or a list) -> the formats, checked against :data:`FORMATS`, without repeats."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not any(names):
        raise ValueError(f"unknown output format(s) {unknown or names}; choose from {','.join(FORMATS)}")
    return tuple(dict.fromkeys(names))


def layer_files(name: str, kind: FrameMode, formats: Sequence[str]) -> dict[str, str]:
    """The files a layer of ``kind`` gets for ``formats`` (format -> path in the folder).

    Every format holds every layer, except MP4 (H.264 has no alpha), which holds opaque layers only.
    """
    files: dict[str, str] = {}
    for fmt in formats:
        if fmt == "png":
            files[fmt] = name
        elif kind == "rgb" or VIDEO_FORMATS[fmt].rgba_pixel_format is not None:
            files[fmt] = name + VIDEO_FORMATS[fmt].suffix
    if not files:
        raise ValueError(
            f"layer {name!r} is transparent and formats {','.join(formats)} cannot hold alpha; "
            "add png, webm or prores"
        )
    return files


def premultiply(frames: torch.Tensor) -> torch.Tensor:
    """Straight RGBA -> premultiplied RGBA (colour x alpha); RGB unchanged."""
    if frames.shape[1] != 4:
        return frames
    return torch.cat([frames[:, :3] * frames[:, 3:], frames[:, 3:]], dim=1)


def unpremultiply(frames: torch.Tensor) -> torch.Tensor:
    """Premultiplied RGBA -> straight RGBA (colour / alpha; colour 0 where alpha is 0); RGB unchanged."""
    if frames.shape[1] != 4:
        return frames
    alpha = frames[:, 3:]
    color = torch.where(alpha > 0, frames[:, :3] / alpha.clamp_min(1e-12), torch.zeros_like(frames[:, :3]))
    return torch.cat([color.clamp(0, 1), alpha], dim=1)


def write_output_dir(
    out_dir: str | os.PathLike[str],
    layers: Sequence[OutputLayer],
    *,
    task: str,
    fps: int = 8,
    seed: int | None = None,
    settings: Mapping[str, Any] | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
    alpha: AlphaMode = "straight",
    summary: str | None = None,
    previews: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write every layer in ``formats``, the previews and ``manifest.json`` into ``out_dir``, atomically.

    Everything is checked before anything is written; a failure leaves no folder behind.
    """
    # 1. Check.
    if not layers:
        raise ValueError("nothing to write: no layers")
    if task not in OUTPUT_TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {OUTPUT_TASKS}")
    if alpha not in ALPHA_MODES:
        raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
    formats = parse_formats(formats)
    for layer in layers:
        if layer.frames.dim() != 4 or layer.frames.shape[1] not in (3, 4):
            raise ValueError(
                f"layer {layer.name!r} must be RGB or RGBA [T, 3|4, H, W], got {tuple(layer.frames.shape)}"
            )
    names = [layer.name for layer in layers]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"layer names repeat: {repeated}")
    shapes = {(layer.frames.shape[0], *layer.frames.shape[2:]) for layer in layers}
    if len(shapes) != 1:
        raise ValueError(f"layers differ in frame count or size: {sorted(shapes)}")
    (num_frames, height, width) = shapes.pop()
    for layer in layers:  # NaN frames would be written as black PNGs
        bad = int((~torch.isfinite(layer.frames)).sum())
        if bad:
            raise ValueError(f"layer {layer.name!r} has {bad} NaN/inf value(s): nothing written")
    files = {layer.name: layer_files(layer.name, layer.kind, formats) for layer in layers}

    # 2. Write into a temporary folder that replaces ``out_dir`` at the end.
    manifest = OutputManifest(
        task=task,
        num_frames=num_frames,
        height=height,
        width=width,
        layers=tuple(
            ManifestLayer(layer.name, layer.role, layer.kind, files[layer.name], layer.prompt, layer.source)
            for layer in layers
        ),
        fps=fps,
        alpha=alpha,
        formats=formats,
        summary=summary,
        seed=seed,
        settings=dict(settings or {}),
    )
    with atomic_directory(out_dir, overwrite=overwrite, replaces=MANIFEST_NAME) as temporary:
        for layer in layers:
            stored = premultiply(layer.frames) if alpha == "premultiplied" else layer.frames
            for fmt, path in files[layer.name].items():
                if fmt == "png":
                    write_frames(temporary / path, to_uint8(stored))
                else:
                    write_video(temporary / path, stored, fps, format=fmt)
        if previews:
            frames = [layer.frames for layer in layers]
            write_contact_sheet(temporary / "preview.png", frames)
            write_preview_gif(temporary / "preview.gif", frames, fps)
        manifest.write(temporary)
    return Path(out_dir)


def read_layer(out_dir: str | os.PathLike[str], manifest: OutputManifest, name: str) -> torch.Tensor:
    """Layer ``name`` of an output folder as ``[T, C, H, W]`` float32 in [0, 1], straight alpha.

    Reads the first of its files in :data:`FORMATS` order (the lossless PNG folder when there is
    one), undoes premultiplication, and checks frame count and size against the manifest.
    """
    entry = manifest.layer(name)
    fmt, file = entry.preferred_file()
    path = Path(out_dir) / file
    frames = read_png_sequence(path, entry.kind) if fmt == "png" else read_video(path, entry.kind)[0]
    expected = manifest.size
    if (frames.shape[0], *frames.shape[2:]) != expected:
        raise FrameError(
            f"{path}: layer {name!r} has {frames.shape[0]} frames of {frames.shape[2]}x{frames.shape[3]}, "
            f"the manifest declares {expected[0]} frames of {expected[1]}x{expected[2]}"
        )
    return unpremultiply(frames) if manifest.alpha == "premultiplied" else frames
