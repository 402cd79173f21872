"""Read layered clips for evaluation: a pipeline output directory and a simple-layout sample.

An output directory's layers are read through :func:`layerflow.media.read_layer` (its PNG folders
when it has them, else its videos; straight alpha whatever the folder stores). A reference sample
must use frame folders; video-file layers are refused with a message saying so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from layerflow.compositing import over
from layerflow.layout import ROLES
from layerflow.media import MANIFEST_NAME, OutputManifest, read_layer, read_manifest, read_png_sequence

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


def _check_layers(manifest: OutputManifest, path: Path) -> None:
    """One layer per role, of the kind its role needs (the manifest's format is checked when read)."""
    seen: dict[str, str] = {}
    for layer in manifest.layers:
        role = layer.role
        if layer.kind != _KINDS[role]:
            raise ValueError(
                f"{path}: layer {layer.name!r} ({role}) must be kind {_KINDS[role]!r}, got {layer.kind!r}"
            )
        if role in seen:
            raise ValueError(
                f"{path}: layers {seen[role]!r} and {layer.name!r} share role {role!r}; "
                "evaluation supports one layer per role"
            )
        seen[role] = layer.name


def read_output_dir(output_dir: str | Path) -> tuple[OutputManifest, LayeredClip]:
    """Manifest and layers of a pipeline output directory (``manifest.json`` + PNG folders or videos)."""
    root = Path(output_dir)
    manifest = read_manifest(root)
    _check_layers(manifest, root / MANIFEST_NAME)
    clip = LayeredClip()
    for layer in manifest.layers:
        role, frames = layer.role, read_layer(root, manifest, layer.name)
        if role == "foreground":
            clip.foreground, clip.alpha = _split_rgba(frames)
        else:
            setattr(clip, role, frames)
        if layer.prompt:
            clip.prompts[role] = layer.prompt
    _check_sizes(clip, str(root))
    t, h, w = clip.size()
    declared = manifest.size
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
        if role == "foreground":
            if (root / "alpha").is_dir():
                clip.foreground = read_png_sequence(folder, "rgb")
                clip.alpha = read_png_sequence(root / "alpha", "alpha")
            else:
                clip.foreground, clip.alpha = _split_rgba(read_png_sequence(folder, "rgba"))
        else:
            setattr(clip, role, read_png_sequence(folder, "rgb"))
    if (
        clip.composite is None
        and clip.foreground is not None
        and clip.alpha is not None
        and clip.background is not None
    ):
        clip.composite = over(clip.foreground, clip.alpha, clip.background)
    _check_sizes(clip, f"reference {root}")
    return clip
