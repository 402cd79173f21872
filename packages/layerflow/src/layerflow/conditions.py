"""Condition inputs of a pipeline call: a whole clip (a tensor) or a layer's first frame only.

``pipe(prompts, "animate", conditions={"foreground": first_frame_only(cutout)})`` animates a
cutout: the layer's first frame becomes the condition latents of its clip's first latent frame (the
causal VAE encodes a clip's opening frames into it alone) and everything else is generated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast, get_args

import torch

from .layout import TaskLayout

#: How first-frame conditions are spliced: clean, as whole-clip conditions (a model trained for the
#: task), or re-noised to every step's timestep (training-free, for a model that never saw clean
#: first frames among noisy ones).
FirstFrameMode = Literal["trained", "training_free"]
FIRST_FRAME_MODES: tuple[FirstFrameMode, ...] = get_args(FirstFrameMode)


@dataclass(frozen=True)
class FirstFrame:
    """A layer given as its first frame only: ``frames`` ``[1, C, H, W]`` or batched ``[B, 1, C, H, W]``
    in [0, 1] (a transparent layer straight-alpha RGBA; a background or composite RGB)."""

    frames: torch.Tensor


def first_frame_only(image: torch.Tensor, *, opaque: bool = False) -> FirstFrame:
    """``image`` ``[C, H, W]`` (or ``[B, C, H, W]``) in [0, 1] as a first-frame condition.

    ``opaque=True`` gives an RGB image an alpha of 1, so it can condition a transparent layer;
    without it an RGB image for a transparent layer is refused by the pipeline (a cutout without
    its alpha is a rectangle).
    """
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"a first frame must be an image [C, H, W] or [B, C, H, W], got {shape}")
    if opaque and image.shape[-3] == 3:
        image = torch.cat([image, torch.ones_like(image[..., :1, :, :])], dim=-3)
    return FirstFrame(image.unsqueeze(-4))


def split_conditions(
    conditions: Mapping[str, torch.Tensor | FirstFrame] | None,
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Condition frames by layer (first frames as their one-frame clips) and the first-frame layers."""
    frames: dict[str, torch.Tensor] = {}
    first: list[str] = []
    for name, value in (conditions or {}).items():
        if isinstance(value, FirstFrame):
            first.append(name)
            value = value.frames
        frames[name] = value
    return frames, tuple(first)


def resolve_first_frame_mode(task_layout: TaskLayout, mode: str | None) -> FirstFrameMode | None:
    """How first-frame conditions are spliced: clean (``"trained"``: the model was trained for the
    task) or re-noised to every step's timestep (``"training_free"``); ``None`` without first frames.
    Default: ``"trained"`` when the layout lists the task, else ``"training_free"``."""
    if mode is not None and mode not in FIRST_FRAME_MODES:
        raise ValueError(f"first_frame_mode must be one of {FIRST_FRAME_MODES}, got {mode!r}")
    if not task_layout.first_frames:
        return None
    trained = task_layout.layout.trained_for(task_layout.task)
    if mode == "trained" and not trained:
        raise ValueError(
            f"this model was not trained for {task_layout.task!r} (its layout runs {list(task_layout.layout.tasks)}): "
            "use first_frame_mode='training_free'"
        )
    return cast(FirstFrameMode, mode) or ("trained" if trained else "training_free")
