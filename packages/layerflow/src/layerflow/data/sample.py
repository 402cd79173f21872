"""The one sample type every dataset yields: frames keyed by layer name, prompts by layer name.

A sample speaks the inference vocabulary (:mod:`layerflow.layout`): each layer has a name and a role,
transparent layers (role ``"foreground"``) carry straight colour plus an alpha matte, and the layers
are listed in depth order, front to back (foregrounds nearest first, then the background), with the
composite last. Any number of foregrounds is allowed; :meth:`LayeredSample.for_layout` matches a
sample to a model's :class:`~layerflow.layout.LayerLayout`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

from layerflow.compositing import over
from layerflow.layout import ROLES, LayerLayout, Role

Source = Literal["video", "static"]
SOURCES: tuple[Source, ...] = ("video", "static")


@dataclass(frozen=True)
class Layer:
    """One layer's frames: ``rgb`` ``[..., T, 3, H, W]`` straight colour in [0, 1] and, for
    transparent layers, ``alpha`` ``[..., T, 1, H, W]`` in [0, 1] (``None`` for opaque layers)."""

    role: Role
    rgb: torch.Tensor
    alpha: torch.Tensor | None = None

    @property
    def frames(self) -> torch.Tensor:
        """Straight RGBA (transparent layers) or RGB: what the pipeline takes as a condition."""
        return self.rgb if self.alpha is None else torch.cat([self.rgb, self.alpha], dim=-3)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Layer:
        """The layer with ``fn`` applied to every tensor."""
        return Layer(self.role, fn(self.rgb), None if self.alpha is None else fn(self.alpha))


def foreground_names(count: int) -> list[str]:
    """Names of ``count`` foregrounds as :meth:`LayerLayout.with_foregrounds` names them, front to back."""
    return [spec.name for spec in LayerLayout.with_foregrounds(count).layers if spec.transparent]


def composite_layers(foregrounds: Sequence[Layer], background: torch.Tensor) -> torch.Tensor:
    """Exact "over" compositing of straight-alpha foregrounds (front to back) onto an opaque background."""
    result = background
    for layer in reversed(foregrounds):
        assert layer.alpha is not None
        result = over(layer.rgb, layer.alpha, result)
    return result


@dataclass
class LayeredSample:
    """One layered clip.

    Attributes:
        sample_id: stable id (folder name, meta-JSON key, ...); every error message names it.
        layers: layer name -> :class:`Layer` (``[T, C, H, W]``), in depth order (front to back), composite last.
        prompts: layer name -> prompt, one per layer.
        source: ``"static"`` for repeated-frame clips (the motion LoRA is gated on, motion alpha 1) and
            ``"video"`` for real motion (motion alpha 0), as LayerFlow's per-sample ``scale``.
        fps: frame rate of the sampled frames (source fps divided by the sampling stride).
    """

    sample_id: str
    layers: dict[str, Layer]
    prompts: dict[str, str]
    source: Source
    fps: float

    def __post_init__(self) -> None:
        where = f"sample {self.sample_id!r}"
        if not self.layers:
            raise ValueError(f"{where} has no layers")
        first = next(iter(self.layers.values())).rgb
        t, h, w = first.shape[0], first.shape[-2], first.shape[-1]
        for name, layer in self.layers.items():
            if layer.role not in ROLES:
                raise ValueError(f"{where}: layer {name!r} has role {layer.role!r}, expected one of {ROLES}")
            expected = {"rgb": (t, 3, h, w), "alpha": (t, 1, h, w) if layer.role == "foreground" else None}
            for part, shape in expected.items():
                tensor = getattr(layer, part)
                got = None if tensor is None else tuple(tensor.shape)
                if got != shape:
                    raise ValueError(f"{where}: layer {name!r} {part} has shape {got}, expected {shape}")
        if self.source not in SOURCES:
            raise ValueError(f"{where}: source must be one of {SOURCES}, got {self.source!r}")
        missing = [name for name in self.layers if name not in self.prompts]
        if missing:
            raise ValueError(f"{where}: prompts lack layer(s) {missing} (have {sorted(self.prompts)})")

    @property
    def num_frames(self) -> int:
        return int(next(iter(self.layers.values())).rgb.shape[0])

    @property
    def is_static(self) -> bool:
        return self.source == "static"

    def layer(self, name: str) -> Layer:
        try:
            return self.layers[name]
        except KeyError:
            raise KeyError(
                f"sample {self.sample_id!r} has no layer {name!r}; it has {list(self.layers)}"
            ) from None

    def frames(self) -> dict[str, torch.Tensor]:
        """Layer name -> ``[T, C, H, W]`` frames in [0, 1] (foregrounds straight RGBA): pipeline conditions."""
        return {name: layer.frames for name, layer in self.layers.items()}

    def for_layout(self, layout: LayerLayout) -> LayeredSample:
        """This sample with exactly ``layout``'s layers, named as the layout names them.

        Layers are matched by name when every layout name is in the sample, else by role in depth
        order (the layout's first foreground is the sample's frontmost, ...). A sample whose roles
        do not match the layout's one for one is an error naming both.
        """
        wanted = [(spec.name, spec.role) for spec in layout.layers]
        if all(name in self.layers for name, _ in wanted) and len(wanted) == len(self.layers):
            picked = {name: self.layers[name] for name, _ in wanted}
        else:
            by_role: dict[str, list[str]] = {}
            for name, layer in self.layers.items():
                by_role.setdefault(layer.role, []).append(name)
            counts = {role: sum(r == role for _, r in wanted) for role in ROLES}
            if any(len(by_role.get(role, [])) != n for role, n in counts.items()):
                have = [(name, layer.role) for name, layer in self.layers.items()]
                raise ValueError(
                    f"sample {self.sample_id!r} has layers {have}; the model's layout needs {wanted}"
                )
            order = {role: iter(names) for role, names in by_role.items()}
            source_names = {name: next(order[role]) for name, role in wanted}
            picked = {name: self.layers[source] for name, source in source_names.items()}
            return replace(
                self,
                layers=picked,
                prompts={name: self.prompts[source] for name, source in source_names.items()},
            )
        for name, role in wanted:
            if picked[name].role != role:
                raise ValueError(
                    f"sample {self.sample_id!r}: layer {name!r} is a {picked[name].role}, the layout's a {role}"
                )
        return replace(self, layers=picked, prompts={name: self.prompts[name] for name, _ in wanted})


def to_static(sample: LayeredSample, frame: int, num_frames: int | None = None) -> LayeredSample:
    """Frame ``frame`` of every layer repeated ``num_frames`` times (default: the clip length).

    These are the static clips LayerFlow trains the motion LoRA on (the official stage-1 data repeats
    one random frame 16 times); the result is tagged ``"static"`` so its motion gate is 1.
    """
    if not -sample.num_frames <= frame < sample.num_frames:
        raise IndexError(
            f"sample {sample.sample_id!r}: frame {frame} out of range for {sample.num_frames} frames"
        )
    count = sample.num_frames if num_frames is None else num_frames
    frame %= sample.num_frames

    def repeat(tensor: torch.Tensor) -> torch.Tensor:
        return tensor[frame : frame + 1].expand(count, -1, -1, -1).contiguous()

    layers = {name: layer.map(repeat) for name, layer in sample.layers.items()}
    return replace(sample, layers=layers, source="static")


@dataclass
class LayeredBatch:
    """Samples stacked along a leading batch dim: every layer ``[B, T, C, H, W]``; see :func:`collate_layered`."""

    sample_ids: list[str]
    layers: dict[str, Layer]
    prompts: dict[str, list[str]]
    sources: list[Source]
    is_static: torch.Tensor
    """``[B]`` float, 1.0 for static samples and 0.0 for videos: LayerFlow's per-sample motion gate."""
    fps: torch.Tensor

    def __len__(self) -> int:
        return len(self.sample_ids)

    def sample_layers(self, index: int) -> dict[str, Layer]:
        """The layers of sample ``index`` (``[T, C, H, W]``)."""
        return {name: layer.map(lambda tensor: tensor[index]) for name, layer in self.layers.items()}


def collate_for_layout(samples: Sequence[LayeredSample], layout: LayerLayout) -> LayeredBatch:
    """:func:`collate_layered` of the samples matched to ``layout`` (:meth:`LayeredSample.for_layout`)."""
    return collate_layered([sample.for_layout(layout) for sample in samples])


def collate_layered(samples: Sequence[LayeredSample]) -> LayeredBatch:
    """``collate_fn`` for a ``DataLoader``: samples must share their layers (names, roles) and ``[T, H, W]``."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    first = samples[0]
    signature = [(name, layer.role, tuple(layer.rgb.shape)) for name, layer in first.layers.items()]
    for sample in samples[1:]:
        other = [(name, layer.role, tuple(layer.rgb.shape)) for name, layer in sample.layers.items()]
        if other != signature:
            raise ValueError(
                f"cannot batch sample {sample.sample_id!r} (layers {other}) with {first.sample_id!r} "
                f"(layers {signature}): use one preprocessing size and one layer layout"
            )

    def stack(name: str) -> Layer:
        layers = [s.layers[name] for s in samples]
        alphas = [layer.alpha for layer in layers if layer.alpha is not None]
        return Layer(
            layers[0].role,
            torch.stack([layer.rgb for layer in layers]),
            torch.stack(alphas) if alphas else None,
        )

    return LayeredBatch(
        sample_ids=[s.sample_id for s in samples],
        layers={name: stack(name) for name in first.layers},
        prompts={name: [s.prompts[name] for s in samples] for name in first.layers},
        sources=[s.source for s in samples],
        is_static=torch.tensor([float(s.is_static) for s in samples]),
        fps=torch.tensor([float(s.fps) for s in samples]),
    )
