"""Read layered clips for evaluation: a pipeline output directory and a simple-layout sample.

Only ``manifest.json`` and the PNG frame folders of an output directory are read (the video files
are optional there). A reference sample must use frame folders; video-file layers are refused
with a message saying so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

ROLES: tuple[str, ...] = ("foreground", "background", "composite")
TASKS: tuple[str, ...] = ("generate", "foreground_to_background", "background_to_foreground", "decompose")
_KINDS = {"foreground": "rgba", "background": "rgb", "composite": "rgb"}


@dataclass
class LayeredClip:
    """Layers of one clip as ``[T, C, H, W]`` float32 in [0, 1] (straight alpha), prompts by role."""

    foreground: Tensor | None = None
    alpha: Tensor | None = None
    background: Tensor | None = None
    composite: Tensor | None = None
    prompts: dict[str, str] = field(default_factory=dict)

    def size(self) -> tuple[int, int, int]:
        """``(T, H, W)`` of the layers (they are checked to agree when read)."""
        for layer in (self.foreground, self.alpha, self.background, self.composite):
            if layer is not None:
                return layer.shape[0], layer.shape[2], layer.shape[3]
        raise ValueError("the clip has no layers")


def _frame_files(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: frame folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"{what}: no .png/.jpg frames in {folder}")
    expected = [f"{i:04d}" for i in range(len(files))]
    if [p.stem for p in files] != expected:
        raise ValueError(
            f"{what}: frames in {folder} must be numbered 0000, 0001, ... without gaps; found {[p.name for p in files][:5]}..."
        )
    return files


def read_frames(folder: Path, mode: str, what: str) -> Tensor:
    """Frames of ``folder`` as ``[T, C, H, W]`` float32; ``mode`` is "RGBA", "RGB" or "L"."""
    frames = []
    for path in _frame_files(folder, what):
        with Image.open(path) as image:
            if mode == "RGBA" and image.mode not in ("RGBA", "LA") and "transparency" not in image.info:
                raise ValueError(
                    f"{what}: {path} has no alpha channel (mode {image.mode}); expected an RGBA PNG"
                )
            frames.append(np.asarray(image.convert(mode)))
    sizes = {f.shape[:2] for f in frames}
    if len(sizes) != 1:
        raise ValueError(f"{what}: frames in {folder} differ in size: {sorted(sizes)}")
    stacked = torch.from_numpy(np.stack(frames)).float() / 255.0
    if stacked.dim() == 3:
        stacked = stacked.unsqueeze(-1)
    return stacked.permute(0, 3, 1, 2).contiguous()


def _split_rgba(rgba: Tensor) -> tuple[Tensor, Tensor]:
    return rgba[:, :3].contiguous(), rgba[:, 3:].contiguous()


def _check_sizes(clip: LayeredClip, where: str) -> None:
    sizes = {
        name: (x.shape[0], x.shape[2], x.shape[3])
        for name in ("foreground", "alpha", "background", "composite")
        if (x := getattr(clip, name)) is not None
    }
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{where}: layers differ in (frames, height, width): {sizes}")


def read_manifest(output_dir: str | Path) -> dict[str, Any]:
    """The validated ``manifest.json`` of a pipeline output directory."""
    path = Path(output_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{output_dir} is not a layerflow output directory: {path} is missing")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != "layerflow-output" or manifest.get("version") != 1:
        raise ValueError(
            f"{path}: expected format 'layerflow-output' version 1, got {manifest.get('format')!r} "
            f"version {manifest.get('version')!r}"
        )
    missing = [k for k in ("task", "num_frames", "height", "width", "layers") if k not in manifest]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    if manifest["task"] not in TASKS:
        raise ValueError(f"{path}: unknown task {manifest['task']!r}; expected one of {TASKS}")
    if manifest.get("alpha", "straight") != "straight":
        raise ValueError(f"{path}: only straight alpha is supported, got {manifest['alpha']!r}")
    seen: dict[str, str] = {}
    for index, layer in enumerate(manifest["layers"]):
        absent = [k for k in ("name", "role", "kind", "frames") if k not in layer]
        if absent:
            raise ValueError(f"{path}: layer {index} misses keys {absent}")
        role = layer["role"]
        if role not in ROLES:
            raise ValueError(
                f"{path}: layer {layer['name']!r} has unknown role {role!r}; expected one of {ROLES}"
            )
        if layer["kind"] != _KINDS[role]:
            raise ValueError(
                f"{path}: layer {layer['name']!r} ({role}) must be kind {_KINDS[role]!r}, got {layer['kind']!r}"
            )
        if role in seen:
            raise ValueError(
                f"{path}: layers {seen[role]!r} and {layer['name']!r} share role {role!r}; "
                "evaluation supports one layer per role"
            )
        seen[role] = layer["name"]
    return dict(manifest)


def read_output_dir(output_dir: str | Path) -> tuple[dict[str, Any], LayeredClip]:
    """Manifest and layers of a pipeline output directory (``manifest.json`` + PNG folders)."""
    root = Path(output_dir)
    manifest = read_manifest(root)
    clip = LayeredClip()
    for layer in manifest["layers"]:
        role, what = layer["role"], f"{root}: layer {layer['name']!r}"
        if role == "foreground":
            clip.foreground, clip.alpha = _split_rgba(read_frames(root / layer["frames"], "RGBA", what))
        else:
            setattr(clip, role, read_frames(root / layer["frames"], "RGB", what))
        if layer.get("prompt"):
            clip.prompts[role] = layer["prompt"]
    _check_sizes(clip, str(root))
    t, h, w = clip.size()
    declared = (manifest["num_frames"], manifest["height"], manifest["width"])
    if (t, h, w) != declared:
        raise ValueError(
            f"{root}: manifest declares (frames, height, width) {declared}, the frames are {(t, h, w)}"
        )
    return manifest, clip


def read_reference_sample(sample_dir: str | Path) -> LayeredClip:
    """One sample folder of the project's simple layout (frame folders; composite optional)."""
    root = Path(sample_dir)
    prompts_path = root / "prompts.json"
    if not prompts_path.is_file():
        raise FileNotFoundError(
            f"reference {root} is not a sample folder of the simple layout: {prompts_path} is missing"
        )
    clip = LayeredClip(prompts={k: v for k, v in json.loads(prompts_path.read_text()).items() if v})
    for role in ROLES:
        folder = root / role
        videos = sorted(root.glob(f"{role}.*"))
        if not folder.is_dir():
            if videos:
                raise ValueError(
                    f"reference {root}: layer {role!r} is a video file ({videos[0].name}); evaluation reads "
                    f"frame folders, so extract its frames to {role}/0000.png ..."
                )
            continue
        what = f"reference {root}: layer {role!r}"
        if role == "foreground":
            if (root / "alpha").is_dir():
                clip.foreground = read_frames(folder, "RGB", what)
                clip.alpha = read_frames(root / "alpha", "L", f"reference {root}: alpha")
            else:
                clip.foreground, clip.alpha = _split_rgba(read_frames(folder, "RGBA", what))
        else:
            setattr(clip, role, read_frames(folder, "RGB", what))
    if (
        clip.composite is None
        and clip.foreground is not None
        and clip.alpha is not None
        and clip.background is not None
    ):
        clip.composite = clip.alpha * clip.foreground + (1 - clip.alpha) * clip.background
    _check_sizes(clip, f"reference {root}")
    return clip
