"""Recomposition: the layers of an output folder, some replaced by user frames, blended back into a clip.

The layers are stacked in the manifest's depth order (front to back) with straight alpha
(:func:`~layerflow.compositing.alpha_over`); the result is a new output folder whose
manifest says, per layer and in a one-line summary, where each layer came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from layerflow.compositing import alpha_over
from layerflow.media import (
    DEFAULT_FORMATS,
    AlphaMode,
    FrameError,
    ManifestLayer,
    OutputLayer,
    OutputManifest,
    read_clip,
    read_layer,
    read_manifest,
    write_output_dir,
)

from .compositing import Placement, place

#: The straight-alpha "over" rule recomposition applies, as recorded in the manifest.
COMPOSITE_RULE = "straight-alpha over, front to back"


class EditError(ValueError):
    """An edit or recomposition that cannot be done; the message names the layer, file and problem."""


@dataclass(frozen=True)
class Replacement:
    """User frames for one layer: ``[T, C, h, w]`` straight alpha (one frame is held for every frame).

    ``origin`` names where they came from (recorded in the manifest); ``placement`` positions and
    scales them, else they must have the clip's size.
    """

    layer: str
    frames: Tensor
    origin: str
    placement: Placement | None = None

    @classmethod
    def from_path(
        cls, layer: str, path: str | os.PathLike[str], placement: Placement | None = None
    ) -> Replacement:
        """Read a PNG folder, an image (a still) or a video (WebM-alpha, ProRes 4444, MP4)."""
        try:
            frames = read_clip(path)
        except FrameError as error:
            raise EditError(f"replacement for layer {layer!r}: {error}") from error
        if frames.shape[1] == 1:  # a grey image is an opaque one
            frames = frames.expand(-1, 3, -1, -1)
        return cls(layer, frames, str(path), placement)

    def describe(self) -> str:
        placed = f" ({self.placement.describe()})" if self.placement else ""
        held = ", a still held for every frame" if self.frames.shape[0] == 1 else ""
        return f"replaced by {self.origin}{placed}{held}"


def recompose_layers(layers: Mapping[str, Tensor], depth: Sequence[str]) -> Tensor:
    """Layers by name (straight alpha) stacked front to back in ``depth`` -> the composite ``[T, 3, H, W]``."""
    for name in depth[:-1]:
        if layers[name].shape[1] != 4:
            raise EditError(
                f"layer {name!r} has no alpha: only the backmost layer ({depth[-1]!r}) may be opaque"
            )
    if layers[depth[-1]].shape[1] != 3:
        raise EditError(f"the backmost layer {depth[-1]!r} must be opaque RGB to composite over")
    return alpha_over([layers[name] for name in depth])


def _fit(replacement: Replacement, spec: ManifestLayer, num_frames: int, height: int, width: int) -> Tensor:
    """The replacement's frames checked and fitted to the clip, in the kind its layer needs."""
    name, frames = replacement.layer, replacement.frames
    where = f"replacement {replacement.origin} for layer {name!r}"
    if frames.shape[0] not in (1, num_frames):
        raise EditError(
            f"{where} has {frames.shape[0]} frames, the clip has {num_frames} (or give one still)"
        )
    if spec.transparent and frames.shape[1] != 4:
        raise EditError(
            f"{where} has no alpha channel; a transparent layer needs RGBA frames (PNG, WebM, ProRes 4444)"
        )
    size = (frames.shape[-2], frames.shape[-1])
    if replacement.placement is None:
        if size != (height, width):
            raise EditError(
                f"{where} is {size[1]}x{size[0]}, the clip is {width}x{height}; place it with --scale/--offset (a Placement)"
            )
        placed = frames
    else:
        placed = place(frames, height, width, replacement.placement)
    if not spec.transparent and placed.shape[1] == 4:
        if bool((placed[:, 3] < 1 - 1e-4).any()):
            raise EditError(f"{where} leaves transparent pixels, but layer {name!r} is opaque")
        placed = placed[:, :3]
    return placed.expand(num_frames, -1, -1, -1).contiguous()


def load_layers(source_dir: str | os.PathLike[str]) -> tuple[OutputManifest, dict[str, Tensor]]:
    """An output folder's manifest and every layer in it (straight alpha), checked against the manifest."""
    try:
        manifest = read_manifest(source_dir)
        return manifest, {name: read_layer(source_dir, manifest, name) for name in manifest.names}
    except (FileNotFoundError, KeyError, ValueError) as error:
        raise EditError(str(error).strip("'\"")) from error


def composite_name(roles: Mapping[str, str]) -> str:
    """The name of the composite layer among ``roles`` (name -> role); ``"composite"`` when there is none."""
    names = [name for name, role in roles.items() if role == "composite"]
    if len(names) > 1:
        raise EditError(f"the manifest has several composite layers {names}; recomposition writes one")
    return names[0] if names else "composite"


def recomposition_check(source_dir: str | os.PathLike[str]) -> list[float]:
    """Per frame, ``mean |composite - recompose(layers)|`` (0-1 scale) of an output folder with a composite."""
    manifest, layers = load_layers(source_dir)
    name = composite_name(manifest.roles)
    if name not in layers:
        raise EditError(f"{source_dir} has no composite layer to check the recomposition against")
    error = (layers[name].double() - recompose_layers(layers, manifest.depth).double()).abs()
    return error.mean(dim=(1, 2, 3)).tolist()


def recompose(
    source_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    replacements: Sequence[Replacement] = (),
    *,
    formats: Sequence[str] = DEFAULT_FORMATS,
    alpha: AlphaMode = "straight",
    overwrite: bool = False,
) -> Path:
    """Composite the layers of ``source_dir`` (some replaced) into a new output folder ``out_dir``.

    Everything is read and checked before anything is written: a replacement naming no layer of the
    manifest (or the composite), a frame count or size that does not fit, or a transparent layer
    replaced by frames without alpha raises :class:`EditError`, and ``out_dir`` is not touched.
    """
    # 1. Read the source and the replacements; check them against each other.
    manifest, layers = load_layers(source_dir)
    composite = composite_name(manifest.roles)
    depth = list(manifest.depth)
    if not depth:
        raise EditError(f"{source_dir}: no layers to composite (only a composite)")
    num_frames, height, width = manifest.size
    sources = {name: f"kept from {source_dir}" for name in depth}
    seen: set[str] = set()
    for replacement in replacements:
        if replacement.layer == composite:
            raise EditError(
                f"layer {composite!r} is the composite that recomposition computes; replace a layer in {depth}"
            )
        if replacement.layer in seen:
            raise EditError(f"layer {replacement.layer!r} is replaced twice")
        seen.add(replacement.layer)
        try:
            spec = manifest.layer(replacement.layer)
        except KeyError as error:
            raise EditError(str(error).strip("'\"")) from error
        layers[replacement.layer] = _fit(replacement, spec, num_frames, height, width)
        sources[replacement.layer] = replacement.describe()

    # 2. Composite in depth order.
    blended = recompose_layers(layers, depth)
    sources[composite] = f"recomposed: {' over '.join(depth)} ({COMPOSITE_RULE})"

    # 3. Write the new folder: the layers in depth order, then the composite.
    prompts = {layer.name: layer.prompt for layer in manifest.layers}
    roles = manifest.roles
    output = [
        OutputLayer(name, roles[name], layers[name], None if name in seen else prompts[name], sources[name])
        for name in depth
    ]
    output.append(
        OutputLayer(
            composite, "composite", blended, None if seen else prompts.get(composite), sources[composite]
        )
    )
    return write_output_dir(
        out_dir,
        output,
        task="recompose",
        fps=manifest.fps or 8,
        seed=manifest.seed,
        settings={"source": str(source_dir), "source_task": manifest.task, "composite": COMPOSITE_RULE},
        formats=formats,
        alpha=alpha,
        summary=summarize(output),
        overwrite=overwrite,
    )


def summarize(layers: Sequence[OutputLayer]) -> str:
    """One line: where every layer came from (``name: source; ...``)."""
    return "; ".join(f"{layer.name}: {layer.source or 'as written'}" for layer in layers)


def replacement_placement(scale: float | None, offset: tuple[int, int] | None) -> Placement | None:
    """A :class:`Placement` when a scale or an offset is given, else ``None`` (frames must fit as they are)."""
    if scale is None and offset is None:
        return None
    return Placement(scale if scale is not None else 1.0, offset if offset is not None else (0, 0))
