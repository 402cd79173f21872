"""The pipeline output directory (``manifest.json`` + per-layer PNG folders + videos + previews).

Format (read back by :func:`read_manifest`; ``layerflow.metrics`` reads the manifest and PNG folders)::

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
from layerflow.json_files import read_json_object
from layerflow.layout import ROLES, TASKS

from .frames import FrameMode, to_uint8, write_frames
from .preview import write_contact_sheet, write_preview_gif
from .video import write_mp4, write_webm_rgba

MANIFEST_FORMAT = "layerflow-output"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
LAYER_KINDS: tuple[FrameMode, ...] = ("rgb", "rgba")


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
    for layer in layers:  # NaN frames would be written as black PNGs
        bad = int((~torch.isfinite(layer.frames)).sum())
        if bad:
            raise ValueError(f"layer {layer.name!r} has {bad} NaN/inf value(s): nothing written")
    entries: list[dict[str, Any]] = []
    with atomic_directory(out_dir, overwrite=overwrite, replaces=MANIFEST_NAME) as temporary:
        for layer in layers:
            channels = layer.frames.shape[1]
            if channels not in (3, 4):
                raise ValueError(f"layer {layer.name!r} must be RGB or RGBA, got {channels} channels")
            kind = "rgba" if channels == 4 else "rgb"
            folder = temporary / layer.name
            folder.mkdir()  # a repeated layer name fails here
            write_frames(folder, to_uint8(layer.frames))
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
        (temporary / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return Path(out_dir)


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``manifest.json`` of an output folder (format in the module docstring).

    Every ``frames``/``video`` entry must name a path inside ``out_dir``: a manifest never makes a
    reader score or load files elsewhere. Raises ``ValueError`` naming the file and the key.
    """
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} is not a LayerFlow output folder: {path} is missing")
    manifest = read_json_object(path)
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(
            f"{path}: expected format {MANIFEST_FORMAT!r} version {MANIFEST_VERSION}, got "
            f"{manifest.get('format')!r} version {manifest.get('version')!r}"
        )
    missing = [k for k in ("task", "num_frames", "height", "width", "layers") if k not in manifest]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    if manifest["task"] not in TASKS:
        raise ValueError(f"{path}: unknown task {manifest['task']!r}; expected one of {TASKS}")
    for key in ("num_frames", "height", "width"):
        value = manifest[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{path}: {key} must be a positive integer, got {value!r}")
    if manifest.get("alpha", "straight") != "straight":
        raise ValueError(f"{path}: only straight alpha is supported, got {manifest['alpha']!r}")
    if not isinstance(manifest["layers"], list) or not manifest["layers"]:
        raise ValueError(f"{path}: 'layers' must be a non-empty list, got {manifest['layers']!r}")
    for index, layer in enumerate(manifest["layers"]):
        if not isinstance(layer, dict):
            raise ValueError(f"{path}: layer {index} must be an object, got {layer!r}")
        absent = [k for k in ("name", "role", "kind", "frames") if k not in layer]
        if absent:
            raise ValueError(f"{path}: layer {index} misses keys {absent}")
        if layer["role"] not in ROLES:
            raise ValueError(
                f"{path}: layer {layer['name']!r} has unknown role {layer['role']!r}; expected one of {ROLES}"
            )
        if layer["kind"] not in LAYER_KINDS:
            raise ValueError(
                f"{path}: layer {layer['name']!r} has unknown kind {layer['kind']!r}; "
                f"expected one of {LAYER_KINDS}"
            )
        for key in ("frames", "video"):
            if key in layer:
                _check_inside(path, f"layer {layer['name']!r} {key}", layer[key])
    return dict(manifest)


def _check_inside(manifest: Path, what: str, value: Any) -> None:
    """``value`` must be a relative path that stays inside the manifest's folder."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{manifest}: {what} must be a relative path, got {value!r}")
    root = manifest.parent.resolve()
    resolved = (root / value).resolve()
    if Path(value).is_absolute() or not resolved.is_relative_to(root) or resolved == root:
        raise ValueError(f"{manifest}: {what} {value!r} points outside the output folder {manifest.parent}")
