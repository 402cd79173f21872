"""The output folder (``manifest.json`` + per-layer PNG folders and videos + previews).

Format (read back by :func:`read_manifest`, layers by :func:`read_layer`)::

    OUT/manifest.json  {"format": "layerflow-output", "version": 2, "task", "fps", "num_frames", "height",
                        "width", "alpha": "straight" | "premultiplied", "formats": [...],
                        "depth": [front .. back layer names], "layers": [{"name", "role", "kind",
                        "files": {format: path}, "prompt"?, "source"?}], "summary"?, "seed", "settings"}
    OUT/<layer>/0000.png ...            "png": RGBA for transparent layers, RGB otherwise
    OUT/<layer>.webm | .mov | .mp4      "webm" (VP9), "prores" (ProRes 4444), "mp4" (H.264, opaque only)
    OUT/preview.png, OUT/preview.gif

``alpha`` says how the colour channels of every transparent layer's files are stored: ``straight``
(colour independent of alpha, the default) or ``premultiplied`` (colour x alpha, what compositors
such as Nuke and Resolve expect from ProRes 4444). In memory layers are always straight alpha.
``depth`` lists the non-composite layers front to back: recomposition stacks them in that order.
``source`` (per layer) and ``summary`` say where each layer came from when a folder was edited.
Version 1 folders (``frames`` + ``video`` per layer, straight alpha) are read as version 2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from layerflow.atomic import atomic_directory
from layerflow.json_files import read_json_object
from layerflow.layout import ALL_TASKS, ROLES
from layerflow.output_policy import register_marker

from .frames import FrameError, FrameMode, read_png_sequence, to_uint8, write_frames
from .preview import write_contact_sheet, write_preview_gif
from .video import VIDEO_FORMATS, read_video, write_video

MANIFEST_FORMAT = "layerflow-output"
MANIFEST_VERSION = 2
MANIFEST_NAME = "manifest.json"
LAYER_KINDS: tuple[FrameMode, ...] = ("rgb", "rgba")
AlphaMode = Literal["straight", "premultiplied"]
ALPHA_MODES: tuple[AlphaMode, ...] = get_args(AlphaMode)
#: What an output folder may have been made by: a model task, or recomposition of layers.
OUTPUT_TASKS: tuple[str, ...] = (*ALL_TASKS, "recompose")
#: File formats of a layer, in the order they are preferred when a layer is read back.
FORMATS: tuple[str, ...] = ("png", "prores", "webm", "mp4")
DEFAULT_FORMATS: tuple[str, ...] = ("png", "webm", "mp4")
register_marker(
    MANIFEST_NAME,
    lambda manifest: (
        manifest.get("format") == MANIFEST_FORMAT and manifest.get("version") in (1, MANIFEST_VERSION)
    ),
)


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


def depth_order(layers: Sequence[tuple[str, str]]) -> list[str]:
    """(name, role) pairs -> non-composite layer names front to back: foregrounds in order, then the rest."""
    front = [name for name, role in layers if role == "foreground"]
    back = [name for name, role in layers if role not in ("foreground", "composite")]
    return front + back


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
    entries: list[dict[str, Any]] = []
    with atomic_directory(out_dir, overwrite=overwrite, replaces=MANIFEST_NAME) as temporary:
        for layer in layers:
            stored = premultiply(layer.frames) if alpha == "premultiplied" else layer.frames
            for fmt, path in files[layer.name].items():
                if fmt == "png":
                    write_frames(temporary / path, to_uint8(stored))
                else:
                    write_video(temporary / path, stored, fps, format=fmt)
            entry: dict[str, Any] = {
                "name": layer.name,
                "role": layer.role,
                "kind": layer.kind,
                "files": files[layer.name],
            }
            if layer.prompt is not None:
                entry["prompt"] = layer.prompt
            if layer.source is not None:
                entry["source"] = layer.source
            entries.append(entry)
        if previews:
            frames = [layer.frames for layer in layers]
            write_contact_sheet(temporary / "preview.png", frames)
            write_preview_gif(temporary / "preview.gif", frames, fps)
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "task": task,
            "fps": fps,
            "num_frames": num_frames,
            "height": height,
            "width": width,
            "alpha": alpha,
            "formats": list(formats),
            "depth": depth_order([(layer.name, layer.role) for layer in layers]),
            "layers": entries,
        }
        if summary is not None:
            manifest["summary"] = summary
        manifest.update(seed=seed, settings=dict(settings or {}))
        (temporary / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return Path(out_dir)


def _upgrade_v1(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """A version-1 manifest (``frames`` + ``video`` per layer, straight alpha) in the version-2 shape."""
    suffixes = {spec.suffix: fmt for fmt, spec in VIDEO_FORMATS.items()}
    for index, layer in enumerate(manifest["layers"]):
        if not isinstance(layer, dict):
            continue  # reported by read_manifest's per-layer check
        if "frames" not in layer:
            raise ValueError(f"{path}: layer {index} misses keys ['frames']")
        files = {"png": layer.pop("frames")}
        video = layer.pop("video", None)
        if video is not None:
            files[suffixes.get(Path(video).suffix, Path(video).suffix.lstrip("."))] = video
        layer["files"] = files
    manifest.setdefault("alpha", "straight")
    return manifest


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``manifest.json`` of an output folder (format in the module docstring).

    Every ``frames``/``video`` entry must name a path inside ``out_dir``: a manifest never makes a
    reader score or load files elsewhere. Raises ``ValueError`` naming the file and the key.
    """
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} is not a LayerFlow output folder: {path} is missing")
    manifest = read_json_object(path)
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") not in (1, MANIFEST_VERSION):
        raise ValueError(
            f"{path}: expected format {MANIFEST_FORMAT!r} version 1 or {MANIFEST_VERSION}, got "
            f"{manifest.get('format')!r} version {manifest.get('version')!r}"
        )
    missing = [k for k in ("task", "num_frames", "height", "width", "layers") if k not in manifest]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    if manifest["task"] not in OUTPUT_TASKS:
        raise ValueError(f"{path}: unknown task {manifest['task']!r}; expected one of {OUTPUT_TASKS}")
    for key in ("num_frames", "height", "width"):
        value = manifest[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{path}: {key} must be a positive integer, got {value!r}")
    if manifest.get("alpha", "straight") not in ALPHA_MODES:
        raise ValueError(f"{path}: alpha must be one of {ALPHA_MODES}, got {manifest['alpha']!r}")
    if not isinstance(manifest["layers"], list) or not manifest["layers"]:
        raise ValueError(f"{path}: 'layers' must be a non-empty list, got {manifest['layers']!r}")
    if manifest["version"] == 1:
        manifest = _upgrade_v1(manifest, path)
    for index, layer in enumerate(manifest["layers"]):
        if not isinstance(layer, dict):
            raise ValueError(f"{path}: layer {index} must be an object, got {layer!r}")
        absent = [k for k in ("name", "role", "kind", "files") if k not in layer]
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
        if not isinstance(layer["files"], dict) or not layer["files"] or set(layer["files"]) - set(FORMATS):
            raise ValueError(
                f"{path}: layer {layer['name']!r} lists files {layer['files']}; formats are {FORMATS}"
            )
        for fmt, value in layer["files"].items():
            _check_inside(path, f"layer {layer['name']!r} {fmt} file", value)
    layers = [(layer["name"], layer["role"]) for layer in manifest["layers"]]
    manifest.setdefault("depth", depth_order(layers))
    unknown = sorted(set(manifest["depth"]) - {name for name, _ in layers})
    if unknown:
        raise ValueError(f"{path}: depth names layers {unknown} that the manifest does not list")
    return dict(manifest)


def manifest_layer(manifest: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The manifest entry of layer ``name``; a missing name raises naming the layers there are."""
    for layer in manifest["layers"]:
        if layer["name"] == name:
            return dict(layer)
    raise KeyError(
        f"no layer {name!r} in the manifest; it has {[layer['name'] for layer in manifest['layers']]}"
    )


def read_layer(out_dir: str | os.PathLike[str], manifest: Mapping[str, Any], name: str) -> torch.Tensor:
    """Layer ``name`` of an output folder as ``[T, C, H, W]`` float32 in [0, 1], straight alpha.

    Reads the first of its files in :data:`FORMATS` order (the lossless PNG folder when there is
    one), undoes premultiplication, and checks frame count and size against the manifest.
    """
    entry = manifest_layer(manifest, name)
    fmt = next(f for f in FORMATS if f in entry["files"])
    path = Path(out_dir) / entry["files"][fmt]
    kind: FrameMode = entry["kind"]
    frames = read_png_sequence(path, kind) if fmt == "png" else read_video(path, kind)[0]
    expected = (manifest["num_frames"], manifest["height"], manifest["width"])
    if (frames.shape[0], *frames.shape[2:]) != expected:
        raise FrameError(
            f"{path}: layer {name!r} has {frames.shape[0]} frames of {frames.shape[2]}x{frames.shape[3]}, "
            f"the manifest declares {expected[0]} frames of {expected[1]}x{expected[2]}"
        )
    return unpremultiply(frames) if manifest.get("alpha") == "premultiplied" else frames


def _check_inside(manifest: Path, what: str, value: Any) -> None:
    """``value`` must be a relative path that stays inside the manifest's folder."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{manifest}: {what} must be a relative path, got {value!r}")
    root = manifest.parent.resolve()
    resolved = (root / value).resolve()
    if Path(value).is_absolute() or not resolved.is_relative_to(root) or resolved == root:
        raise ValueError(f"{manifest}: {what} {value!r} points outside the output folder {manifest.parent}")
