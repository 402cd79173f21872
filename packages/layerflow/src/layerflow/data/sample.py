"""The one sample type every dataset yields, its batch, and the official model-input transform."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

Source = Literal["video", "static"]
SOURCES: tuple[Source, ...] = ("video", "static")
PROMPT_ROLES = ("foreground", "background", "composite")
"""Prompt roles in LayerFlow's prompt-index order: ``"0, <fg>"``, ``"1, <bg>"``, ``"2, <blended>"``."""
CLIP_ORDER = ("foreground", "alpha", "background", "composite")
"""The official RGBA clip order along time: foreground, alpha, background, blended."""


@dataclass
class LayeredSample:
    """One layered clip.

    Attributes:
        sample_id: stable id (folder name, meta-JSON key, ...); every error message names it.
        foreground: ``[T, 3, H, W]`` straight (not premultiplied) foreground colour in [0, 1].
        alpha: ``[T, 1, H, W]`` foreground opacity in [0, 1].
        background: ``[T, 3, H, W]`` opaque background in [0, 1].
        composite: ``[T, 3, H, W]`` the blended video in [0, 1].
        prompts: one prompt per role in :data:`PROMPT_ROLES`.
        source: ``"static"`` for repeated-frame clips (the motion LoRA is gated on, motion alpha 1) and
            ``"video"`` for real motion (motion alpha 0), as LayerFlow's per-sample ``scale``.
        fps: frame rate of the sampled frames (source fps divided by the sampling stride).
    """

    sample_id: str
    foreground: torch.Tensor
    alpha: torch.Tensor
    background: torch.Tensor
    composite: torch.Tensor
    prompts: dict[str, str]
    source: Source
    fps: float

    def __post_init__(self) -> None:
        t, _, h, w = self.foreground.shape
        expected = {"foreground": (t, 3, h, w), "alpha": (t, 1, h, w)}
        expected |= {"background": (t, 3, h, w), "composite": (t, 3, h, w)}
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"sample {self.sample_id!r}: {name} has shape {got}, expected {shape}")
        if self.source not in SOURCES:
            raise ValueError(
                f"sample {self.sample_id!r}: source must be one of {SOURCES}, got {self.source!r}"
            )
        missing = [role for role in PROMPT_ROLES if role not in self.prompts]
        if missing:
            raise ValueError(
                f"sample {self.sample_id!r}: prompts lack {missing} (have {sorted(self.prompts)})"
            )

    @property
    def num_frames(self) -> int:
        return int(self.foreground.shape[0])

    @property
    def is_static(self) -> bool:
        return self.source == "static"

    def to_model_inputs(self) -> ModelInputs:
        return to_model_inputs(self.foreground, self.alpha, self.background, self.composite)


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

    def repeat(layer: torch.Tensor) -> torch.Tensor:
        return layer[frame : frame + 1].expand(count, -1, -1, -1).contiguous()

    return replace(
        sample,
        foreground=repeat(sample.foreground),
        alpha=repeat(sample.alpha),
        background=repeat(sample.background),
        composite=repeat(sample.composite),
        source="static",
    )


@dataclass
class ModelInputs:
    """The official LayerFlow pixel clips, each ``[..., T, 3, H, W]`` in [-1, 1].

    ``foreground`` is premultiplied onto mid-grey and ``alpha`` is the mask repeated to 3 channels
    (0 -> -1, 1 -> +1), so all four clips are ordinary RGB videos for the stock VAE.
    """

    foreground: torch.Tensor
    alpha: torch.Tensor
    background: torch.Tensor
    composite: torch.Tensor

    def concat(self, order: Sequence[str] = CLIP_ORDER) -> torch.Tensor:
        """The clips concatenated along time (dim -4), in ``order``: one video for joint VAE encoding."""
        return torch.cat([getattr(self, name) for name in order], dim=-4)


def to_model_inputs(
    foreground: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor, composite: torch.Tensor
) -> ModelInputs:
    """Map [0, 1] layers (``[..., T, C, H, W]``, straight alpha) to the official model input clips.

    Matches ``image_process_simple`` of the official code: ``a * rgb`` in [-1, 1] space, which is the
    foreground premultiplied onto 0.5 grey, ``fg * a + 0.5 * (1 - a)``, before mapping to [-1, 1].
    """
    grey_premultiplied = foreground * alpha + 0.5 * (1.0 - alpha)
    repeat = [1] * alpha.dim()
    repeat[-3] = 3
    return ModelInputs(
        foreground=grey_premultiplied * 2.0 - 1.0,
        alpha=alpha.repeat(*repeat) * 2.0 - 1.0,
        background=background * 2.0 - 1.0,
        composite=composite * 2.0 - 1.0,
    )


@dataclass
class LayeredBatch:
    """Samples stacked along a leading batch dim (``[B, T, C, H, W]``); see :func:`collate_layered`."""

    sample_ids: list[str]
    foreground: torch.Tensor
    alpha: torch.Tensor
    background: torch.Tensor
    composite: torch.Tensor
    prompts: dict[str, list[str]]
    sources: list[Source]
    is_static: torch.Tensor
    """``[B]`` float, 1.0 for static samples and 0.0 for videos: LayerFlow's per-sample motion gate."""
    fps: torch.Tensor

    def __len__(self) -> int:
        return len(self.sample_ids)

    def layer_prompts(self) -> list[list[str]]:
        """Per-sample prompt lists in :data:`PROMPT_ROLES` order (what a layer prompt encoder takes)."""
        return [[self.prompts[role][b] for role in PROMPT_ROLES] for b in range(len(self))]

    def to_model_inputs(self) -> ModelInputs:
        return to_model_inputs(self.foreground, self.alpha, self.background, self.composite)


def collate_layered(samples: Sequence[LayeredSample]) -> LayeredBatch:
    """``collate_fn`` for a ``DataLoader`` over any of the datasets: samples must share ``[T, H, W]``."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    first = samples[0]
    for sample in samples[1:]:
        if sample.foreground.shape != first.foreground.shape:
            raise ValueError(
                f"cannot batch sample {sample.sample_id!r} of shape {tuple(sample.foreground.shape)} with "
                f"{first.sample_id!r} of shape {tuple(first.foreground.shape)}: use one preprocessing size"
            )
    return LayeredBatch(
        sample_ids=[s.sample_id for s in samples],
        foreground=torch.stack([s.foreground for s in samples]),
        alpha=torch.stack([s.alpha for s in samples]),
        background=torch.stack([s.background for s in samples]),
        composite=torch.stack([s.composite for s in samples]),
        prompts={role: [s.prompts[role] for s in samples] for role in PROMPT_ROLES},
        sources=[s.source for s in samples],
        is_static=torch.tensor([float(s.is_static) for s in samples]),
        fps=torch.tensor([float(s.fps) for s in samples]),
    )
