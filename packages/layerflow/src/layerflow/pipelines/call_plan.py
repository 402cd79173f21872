"""The plan of one pipeline call: sizes, batched conditions, latent frame indices and attention
arguments, derived from checked arguments before any model runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from layerflow.conditions import FirstFrameMode, resolve_first_frame_mode, split_conditions
from layerflow.geometry import FrameGeometry
from layerflow.layout import TaskLayout

from .call_checks import (
    CheckedPipeline,
    ConditionFrames,
    batch_conditions,
    call_batch_size,
    check_conditions,
    check_frames,
    guided_steps,
)


@dataclass(frozen=True)
class CallPlan:
    """What one call runs on, derived by :func:`plan_call` from arguments :func:`.call_checks.check_call` accepted.

    Attributes:
        task_layout: the layout resolved for the task.
        frames: frame count, sizes and latent frames of every clip.
        conditions: condition layer -> frames ``[B, T, C, H, W]`` (already expanded to the batch).
        batch_size: videos generated (prompt batch x ``num_videos_per_prompt``).
        condition_frames, generated_frames: indices into the full latent sequence.
        settings: resolved sampling settings (steps, guidance, dynamic CFG, unconditional text).
        attention_kwargs: what the transformer gets on every call (segment layout included).
        first_frame_mode: how first-frame conditions are spliced (``None``: the call has none).
    """

    task_layout: TaskLayout
    frames: FrameGeometry
    conditions: dict[str, torch.Tensor]
    batch_size: int
    condition_frames: tuple[int, ...]
    generated_frames: tuple[int, ...]
    settings: dict[str, Any]
    attention_kwargs: dict[str, Any]
    first_frame_mode: FirstFrameMode | None = None

    @property
    def first_frame_latents(self) -> tuple[int, ...]:
        """Indices of the first-frame condition latents in the full sequence."""
        return self.task_layout.first_frame_latent_frames(self.frames.clip_latent_frames)

    @property
    def guided(self) -> bool:
        """Whether any step is guided (the call needs the unconditional text)."""
        return float(self.settings["guidance_scale"]) > 1.0

    def guided_at(self, step: int, num_steps: int) -> bool:
        """Whether step ``step`` of ``num_steps`` runs CFG: inside ``guidance_interval``, as
        diffusers' guiders count it (``int(start * N) <= step < int(stop * N)``)."""
        return self.guided and step in guided_steps(self.settings["guidance_interval"], num_steps)


def plan_call(
    pipe: CheckedPipeline,
    task: str,
    conditions: ConditionFrames | None,
    num_frames: int | None,
    height: int | None,
    width: int | None,
    prompt_embeds: torch.Tensor | None,
    settings: dict[str, Any],
    *,
    isolate_conditions: bool,
    num_videos_per_prompt: int,
    attention_kwargs: dict[str, Any] | None,
    first_frame_mode: str | None = None,
) -> CallPlan:
    """The plan of a call whose arguments :func:`.call_checks.check_call` accepted."""
    frames_by_layer, first_frames = split_conditions(conditions)
    task_layout = pipe.layer_layout.for_task(task, first_frames)
    condition_frames, num_frames, height, width = check_conditions(
        pipe, task_layout, frames_by_layer, num_frames, height, width
    )
    frames = check_frames(pipe, task_layout, num_frames, height, width)
    batch_size = call_batch_size(prompt_embeds, num_videos_per_prompt)
    return CallPlan(
        task_layout=task_layout,
        frames=frames,
        conditions=batch_conditions(condition_frames, batch_size),
        batch_size=batch_size,
        condition_frames=task_layout.condition_latent_frames(frames.clip_latent_frames),
        generated_frames=task_layout.generated_latent_frames(frames.clip_latent_frames),
        settings=settings,
        attention_kwargs={
            **pipe.transformer.attention_kwargs_for(task_layout, frames, isolate_conditions),
            **(attention_kwargs or {}),
        },
        first_frame_mode=resolve_first_frame_mode(task_layout, first_frame_mode),
    )
