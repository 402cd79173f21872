"""The pipeline output directory (``manifest.json`` + per-layer PNG folders + videos + previews).

Format (shared with ``layerflow.metrics``, which reads only the manifest and the PNG folders)::

    OUT/manifest.json  {"format": "layerflow-output", "version": 1, "task", "fps", "num_frames", "height",
                        "width", "alpha": "straight", "layers": [{"name", "role", "kind", "frames",
                        "video"?, "prompt"?}], "seed", "settings"}
    OUT/<layer>/0000.png ...   RGBA (straight alpha) for transparent layers, RGB otherwise
    OUT/<layer>.webm | .mp4    optional videos;   OUT/preview.png, OUT/preview.gif
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerflow.atomic import atomic_directory

from .frames import to_uint8, write_png_frames
from .preview import write_contact_sheet, write_preview_gif
from .video import write_mp4, write_webm_rgba

MANIFEST_FORMAT = "layerflow-output"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class OutputLayer:
    """One layer to write: ``frames`` ``[T, C, H, W]`` in [0, 1], C = 4 (straight RGBA) or 3."""

    name: str
    role: str
    frames: torch.Tensor
    prompt: str | None = None


def write_output_dir(
    out_dir: str | os.PathLike[str],
    layers: Sequence[OutputLayer],
    *,
    task: str,
    fps: int = 8,
    seed: int | None = None,
    settings: Mapping[str, Any] | None = None,
    videos: bool = True,
    previews: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write every layer, the previews and ``manifest.json`` into ``out_dir``, atomically as a whole."""
    if not layers:
        raise ValueError("nothing to write: no layers")
    shapes = {(layer.frames.shape[0], *layer.frames.shape[2:]) for layer in layers}
    if len(shapes) != 1:
        raise ValueError(f"layers differ in frame count or size: {sorted(shapes)}")
    (num_frames, height, width) = shapes.pop()
    entries: list[dict[str, Any]] = []
    with atomic_directory(out_dir, overwrite=overwrite) as temporary:
        for layer in layers:
            channels = layer.frames.shape[1]
            if channels not in (3, 4):
                raise ValueError(f"layer {layer.name!r} must be RGB or RGBA, got {channels} channels")
            kind = "rgba" if channels == 4 else "rgb"
            folder = temporary / layer.name
            folder.mkdir()
            write_png_frames(folder, to_uint8(layer.frames))
            entry: dict[str, Any] = {
                "name": layer.name,
                "role": layer.role,
                "kind": kind,
                "frames": layer.name,
            }
            if videos:
                video = f"{layer.name}.webm" if kind == "rgba" else f"{layer.name}.mp4"
                writer = write_webm_rgba if kind == "rgba" else write_mp4
                writer(temporary / video, layer.frames, fps)
                entry["video"] = video
            if layer.prompt is not None:
                entry["prompt"] = layer.prompt
            entries.append(entry)
        if previews:
            frames = [layer.frames for layer in layers]
            write_contact_sheet(temporary / "preview.png", frames)
            write_preview_gif(temporary / "preview.gif", frames, fps)
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "task": task,
            "fps": fps,
            "num_frames": num_frames,
            "height": height,
            "width": width,
            "alpha": "straight",
            "layers": entries,
            "seed": seed,
            "settings": dict(settings or {}),
        }
        (temporary / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return Path(out_dir)


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} is not a LayerFlow output folder: {path} is missing")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    return manifest
