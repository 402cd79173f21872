"""The manifest of an output folder: one typed object, read and written by the same code.

``OUT/manifest.json`` (version 2)::

    {"format": "layerflow-output", "version": 2, "task", "fps", "num_frames", "height", "width",
     "alpha": "straight" | "premultiplied", "formats": [...], "depth": [front .. back layer names],
     "layers": [{"name", "role", "kind", "files": {format: path}, "prompt"?, "source"?}],
     "summary"?, "seed", "settings"}

``alpha`` says how the colour channels of every transparent layer's files are stored: ``straight``
(colour independent of alpha, the default) or ``premultiplied`` (colour x alpha, what compositors
such as Nuke and Resolve expect from ProRes 4444). ``depth`` lists the non-composite layers front to
back: recomposition stacks them in that order. ``source`` (per layer) and ``summary`` say where each
layer came from when a folder was edited. Version 1 folders (``frames`` + ``video`` per layer,
straight alpha) are read as version 2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

from layerflow.json_files import read_json_object
from layerflow.layout import ALL_TASKS, ROLES
from layerflow.output_policy import register_marker

from .frames import FrameMode
from .video import VIDEO_FORMATS

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
register_marker(
    MANIFEST_NAME,
    lambda manifest: (
        manifest.get("format") == MANIFEST_FORMAT and manifest.get("version") in (1, MANIFEST_VERSION)
    ),
)


def depth_order(layers: Sequence[tuple[str, str]]) -> list[str]:
    """(name, role) pairs -> non-composite layer names front to back: foregrounds in order, then the rest."""
    front = [name for name, role in layers if role == "foreground"]
    back = [name for name, role in layers if role not in ("foreground", "composite")]
    return front + back


@dataclass(frozen=True)
class ManifestLayer:
    """One layer of an output folder: its role, ``kind`` (``"rgba"`` = transparent) and files per format."""

    name: str
    role: str
    kind: FrameMode
    files: Mapping[str, str]
    prompt: str | None = None
    source: str | None = None

    @property
    def transparent(self) -> bool:
        return self.kind == "rgba"

    def preferred_file(self) -> tuple[str, str]:
        """(format, path) of the file a reader loads: the first of :data:`FORMATS` the layer has."""
        fmt = next(f for f in FORMATS if f in self.files)
        return fmt, self.files[fmt]

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "role": self.role,
            "kind": self.kind,
            "files": dict(self.files),
        }
        if self.prompt is not None:
            entry["prompt"] = self.prompt
        if self.source is not None:
            entry["source"] = self.source
        return entry

    @classmethod
    def from_dict(cls, data: Any, index: int, path: Path) -> ManifestLayer:
        """A validated layer entry; ``ValueError`` naming the manifest file, the layer and the key."""
        if not isinstance(data, dict):
            raise ValueError(f"{path}: layer {index} must be an object, got {data!r}")
        absent = [k for k in ("name", "role", "kind", "files") if k not in data]
        if absent:
            raise ValueError(f"{path}: layer {index} misses keys {absent}")
        name, role, kind, files = data["name"], data["role"], data["kind"], data["files"]
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}: layer {index} name must be a non-empty string, got {name!r}")
        if role not in ROLES:
            raise ValueError(f"{path}: layer {name!r} has unknown role {role!r}; expected one of {ROLES}")
        if kind not in LAYER_KINDS:
            raise ValueError(
                f"{path}: layer {name!r} has unknown kind {kind!r}; expected one of {LAYER_KINDS}"
            )
        if not isinstance(files, dict) or not files or set(files) - set(FORMATS):
            raise ValueError(f"{path}: layer {name!r} lists files {files}; formats are {FORMATS}")
        for fmt, value in files.items():
            _check_inside(path, f"layer {name!r} {fmt} file", value)
        for key in ("prompt", "source"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ValueError(f"{path}: layer {name!r} {key} must be a string, got {data[key]!r}")
        return cls(name, role, kind, dict(files), data.get("prompt"), data.get("source"))


@dataclass(frozen=True)
class OutputManifest:
    """What an output folder holds: the task that made it, the clip size and its layers (see module docs)."""

    task: str
    num_frames: int
    height: int
    width: int
    layers: tuple[ManifestLayer, ...]
    fps: int | None = None
    alpha: AlphaMode = "straight"
    formats: tuple[str, ...] = ()
    depth: tuple[str, ...] = ()
    summary: str | None = None
    seed: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.depth:  # frozen: the derived default is set once, here
            object.__setattr__(self, "depth", tuple(depth_order([(x.name, x.role) for x in self.layers])))

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def roles(self) -> dict[str, str]:
        """Layer name -> role, in the manifest's order."""
        return {layer.name: layer.role for layer in self.layers}

    @property
    def size(self) -> tuple[int, int, int]:
        """``(frames, height, width)`` every layer of the folder has."""
        return self.num_frames, self.height, self.width

    def layer(self, name: str) -> ManifestLayer:
        """Layer ``name``; a missing name raises naming the layers there are."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in the manifest; it has {self.names}")

    def with_role(self, role: str) -> list[ManifestLayer]:
        return [layer for layer in self.layers if layer.role == role]

    def to_dict(self) -> dict[str, Any]:
        """The ``manifest.json`` object, keys in the order the format lists them."""
        data: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "task": self.task,
            "fps": self.fps,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "alpha": self.alpha,
            "formats": list(self.formats),
            "depth": list(self.depth),
            "layers": [layer.to_dict() for layer in self.layers],
        }
        if self.summary is not None:
            data["summary"] = self.summary
        data.update(seed=self.seed, settings=dict(self.settings))
        return data

    def write(self, folder: str | os.PathLike[str]) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, out_dir: str | os.PathLike[str]) -> OutputManifest:
        """The validated manifest of an output folder.

        Every file entry must name a path inside ``out_dir``: a manifest never makes a reader score
        or load files elsewhere. Raises ``ValueError`` naming the file and the key.
        """
        path = Path(out_dir) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{out_dir} is not a LayerFlow output folder: {path} is missing")
        return cls.from_dict(read_json_object(path), path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> OutputManifest:
        """A validated manifest from its JSON object; ``path`` names the file in errors."""
        if data.get("format") != MANIFEST_FORMAT or data.get("version") not in (1, MANIFEST_VERSION):
            raise ValueError(
                f"{path}: expected format {MANIFEST_FORMAT!r} version 1 or {MANIFEST_VERSION}, got "
                f"{data.get('format')!r} version {data.get('version')!r}"
            )
        missing = [k for k in ("task", "num_frames", "height", "width", "layers") if k not in data]
        if missing:
            raise ValueError(f"{path}: missing keys {missing}")
        if data["task"] not in OUTPUT_TASKS:
            raise ValueError(f"{path}: unknown task {data['task']!r}; expected one of {OUTPUT_TASKS}")
        for key in ("num_frames", "height", "width"):
            if not _positive_int(data[key]):
                raise ValueError(f"{path}: {key} must be a positive integer, got {data[key]!r}")
        for key in ("fps", "seed"):
            value = data.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{path}: {key} must be an integer, got {value!r}")
        alpha = data.get("alpha", "straight")
        if alpha not in ALPHA_MODES:
            raise ValueError(f"{path}: alpha must be one of {ALPHA_MODES}, got {alpha!r}")
        if not isinstance(data["layers"], list) or not data["layers"]:
            raise ValueError(f"{path}: 'layers' must be a non-empty list, got {data['layers']!r}")
        entries = _upgrade_v1(data["layers"], path) if data["version"] == 1 else data["layers"]
        layers = tuple(ManifestLayer.from_dict(entry, index, path) for index, entry in enumerate(entries))
        depth = data.get("depth") or depth_order([(x.name, x.role) for x in layers])
        if not isinstance(depth, list) or sorted(set(depth) - {x.name for x in layers}):
            unknown = sorted(set(depth) - {x.name for x in layers}) if isinstance(depth, list) else depth
            raise ValueError(f"{path}: depth names layers {unknown} that the manifest does not list")
        settings = data.get("settings") or {}
        if not isinstance(settings, dict):
            raise ValueError(f"{path}: settings must be an object, got {settings!r}")
        formats = data.get("formats") or list(dict.fromkeys(f for x in layers for f in x.files))
        return cls(
            task=data["task"],
            num_frames=data["num_frames"],
            height=data["height"],
            width=data["width"],
            layers=layers,
            fps=data.get("fps"),
            alpha=cast(AlphaMode, alpha),
            formats=tuple(formats),
            depth=tuple(depth),
            summary=data.get("summary"),
            seed=data.get("seed"),
            settings=settings,
        )


def read_manifest(out_dir: str | os.PathLike[str]) -> OutputManifest:
    """The validated manifest of an output folder (:meth:`OutputManifest.read`)."""
    return OutputManifest.read(out_dir)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _upgrade_v1(entries: list[Any], path: Path) -> list[Any]:
    """Version-1 layer entries (``frames`` + ``video``) in the version-2 shape (``files``)."""
    suffixes = {spec.suffix: fmt for fmt, spec in VIDEO_FORMATS.items()}
    upgraded: list[Any] = []
    for index, layer in enumerate(entries):
        if not isinstance(layer, dict):
            upgraded.append(layer)  # reported by ManifestLayer.from_dict
            continue
        if "frames" not in layer:
            raise ValueError(f"{path}: layer {index} misses keys ['frames']")
        layer = dict(layer)
        files = {"png": layer.pop("frames")}
        video = layer.pop("video", None)
        if video is not None:
            files[suffixes.get(Path(video).suffix, Path(video).suffix.lstrip("."))] = video
        upgraded.append({**layer, "files": files})
    return upgraded


def _check_inside(manifest: Path, what: str, value: Any) -> None:
    """``value`` must be a relative path that stays inside the manifest's folder."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{manifest}: {what} must be a relative path, got {value!r}")
    root = manifest.parent.resolve()
    resolved = (root / value).resolve()
    if Path(value).is_absolute() or not resolved.is_relative_to(root) or resolved == root:
        raise ValueError(f"{manifest}: {what} {value!r} points outside the output folder {manifest.parent}")
