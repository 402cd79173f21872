"""The LayerFlow training objective: task mixing, noising, text dropout and the masked v-loss.

Every clip of a sample is in the model input, as at inference: the task's condition clips clean,
the others noised by the pipeline's DDPM (zero-terminal-SNR, v-prediction) schedule at one timestep
per sample. The loss is the v-prediction MSE over the generated clips only, averaged per sample and
then over the batch (so data-parallel gradient averaging equals the single-process global mean).

All randomness of a sample (task, timestep, noise, posterior draw, prompt dropout) comes from a
generator seeded by ``(seed, step, micro_step, global sample position)``: a run is reproduced exactly
after a resume, and a 2-process run draws what the 1-process run with the same global batch draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from layerflow.layout import FIRST_FRAME_TASKS, LayerLayout, TaskLayout

#: Independent random streams per sample.
STREAM_TASK, STREAM_TIMESTEP, STREAM_NOISE, STREAM_POSTERIOR, STREAM_DROPOUT, STREAM_BATCH_TASK = range(6)
STREAM_FIRST_FRAMES, STREAM_FIRST_FRAME_SIGMA, STREAM_FIRST_FRAME_NOISE, STREAM_FIRST_FRAME_POSTERIOR = range(
    6, 10
)
#: First-frame tasks in training: every foreground is given its first frame (the cutout), the
#: background with this probability (the plate), the composite never.
BACKGROUND_FIRST_FRAME_PROBABILITY = 0.5
#: CogVideoX image-to-video condition noise: std ``exp(N(mean, std))`` in model range.
FIRST_FRAME_NOISE_LOG_SIGMA = (-3.0, 0.5)


def sample_generator(seed: int, step: int, micro_step: int, position: int, stream: int) -> torch.Generator:
    """A CPU generator for one random stream of the sample at global ``position`` of a micro-batch."""
    state = np.random.SeedSequence([seed, step, micro_step, position, stream]).generate_state(1)
    return torch.Generator().manual_seed(int(state[0]))


class TaskSampler:
    """Draws tasks with configured probabilities (normalised), per batch or per sample."""

    def __init__(self, probabilities: Mapping[str, float], layout: LayerLayout):
        drawn = [(task, float(p)) for task, p in probabilities.items() if p > 0]
        if not drawn:
            raise ValueError("at least one task needs a probability > 0")
        self.tasks = [task for task, _ in drawn]
        weights = torch.tensor([p for _, p in drawn], dtype=torch.float64)
        self.cumulative = (weights / weights.sum()).cumsum(0)
        self.layouts = {task: layout.for_task(task) for task in self.tasks}

    def draw(self, generator: torch.Generator) -> str:
        u = torch.rand((), generator=generator, dtype=torch.float64)
        index = int(torch.searchsorted(self.cumulative, u, right=True).clamp(max=len(self.tasks) - 1))
        return self.tasks[index]


@dataclass
class ModelBatch:
    """What one forward/backward needs, on the training device.

    Attributes:
        latents: ``[B, F, C, h, w]`` clean latents of every clip in layout order.
        prompt_embeds: ``[B, L * S, D]`` text embeddings, one prompt per layout layer in layout order.
        is_static: ``[B]`` float, the per-sample motion gate.
        clip_frames: latent frames of each clip in layout order.
    """

    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    is_static: torch.Tensor
    clip_frames: tuple[int, ...]
    sample_ids: list[str]


@dataclass
class SampleDraws:
    """What a micro-batch's samples drew before encoding: each one's task (with the layers given as
    first frames) and the std of its first-frame noise augmentation (``None``: none)."""

    task_layouts: list[TaskLayout]
    first_frame_sigmas: list[float | None]

    @property
    def tasks(self) -> list[str]:
        return [task_layout.task for task_layout in self.task_layouts]


@dataclass
class NoisedBatch:
    """The model input of one micro-batch and what its loss compares against."""

    model_input: torch.Tensor
    text: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    loss_mask: torch.Tensor
    """``[B, F]``: 1 on latent frames of generated clips, 0 on condition clips."""
    tasks: list[str]
    num_clips: int


def condition_frame_mask(task_layouts: Sequence[TaskLayout], clip_frames: Sequence[int]) -> torch.Tensor:
    """``[B, F]`` float: 0 on each sample's clean condition latents (as the pipeline keeps them), 1 elsewhere."""
    mask = torch.ones(len(task_layouts), sum(clip_frames))
    for b, task_layout in enumerate(task_layouts):
        mask[b, list(task_layout.condition_latent_frames(clip_frames))] = 0.0
    return mask


def prompt_tokens(embeds: torch.Tensor, task_layout: TaskLayout, tokens_per_prompt: int) -> torch.Tensor:
    """The task's prompts (prompt order) out of ``[B, L * S, D]`` embeddings of every layout layer."""
    names = [spec.name for spec in task_layout.layout.layers]
    rows = embeds.unflatten(1, (len(names), tokens_per_prompt))
    picked = [names.index(layer.name) for layer in task_layout.prompt_layers]
    return rows[:, picked].flatten(1, 2)


def drop_prompts(text: torch.Tensor, keep: torch.Tensor, tokens_per_prompt: int) -> torch.Tensor:
    """Zero whole layer prompts (``keep``: ``[B, L]`` of 0/1): the unconditional embedding of CFG."""
    rows = text.unflatten(1, (keep.shape[1], tokens_per_prompt))
    return (rows * keep[:, :, None, None].to(rows.dtype)).flatten(1, 2)


class Objective:
    """Noising, task mixing and text dropout for one layout and noise schedule.

    Args:
        scheduler: the pipeline's scheduler (``CogVideoXDPMScheduler`` or DDIM, same DDPM config):
            ``add_noise`` noises and ``get_velocity`` gives the v-prediction target.
        layout: the model's layer layout.
        tasks: task -> probability; ``task_mixing``: ``"per_batch"`` or ``"per_sample"``.
        text_dropout: per layer prompt probability of the zero (unconditional) embedding.
        tokens_per_prompt: the transformer's ``max_text_seq_length``.
    """

    def __init__(
        self,
        scheduler: object,
        layout: LayerLayout,
        tasks: Mapping[str, float],
        *,
        task_mixing: str,
        text_dropout: float,
        tokens_per_prompt: int,
        seed: int,
        first_frame_noise: bool = True,
    ):
        self.scheduler = scheduler
        self.layout = layout
        self.sampler = TaskSampler(tasks, layout)
        self.task_mixing = task_mixing
        self.text_dropout = text_dropout
        self.tokens_per_prompt = tokens_per_prompt
        self.seed = seed
        self.first_frame_noise = first_frame_noise
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)  # type: ignore[attr-defined]

    def generator(self, step: int, micro_step: int, position: int, stream: int) -> torch.Generator:
        return sample_generator(self.seed, step, micro_step, position, stream)

    def draw_tasks(self, step: int, micro_step: int, positions: Sequence[int]) -> list[str]:
        """One task per sample; per batch, one draw from the micro-batch's own stream for all samples."""
        if self.task_mixing == "per_batch":
            task = self.sampler.draw(self.generator(step, micro_step, 0, STREAM_BATCH_TASK))
            return [task] * len(positions)
        return [self.sampler.draw(self.generator(step, micro_step, p, STREAM_TASK)) for p in positions]

    def draw(self, step: int, micro_step: int, positions: Sequence[int]) -> SampleDraws:
        """Each sample's task, first-frame layers and first-frame noise std (see :class:`SampleDraws`)."""
        task_layouts: list[TaskLayout] = []
        sigmas: list[float | None] = []
        for task, position in zip(self.draw_tasks(step, micro_step, positions), positions, strict=True):
            if task not in FIRST_FRAME_TASKS:
                task_layouts.append(self.sampler.layouts[task])
                sigmas.append(None)
                continue
            coin = torch.rand((), generator=self.generator(step, micro_step, position, STREAM_FIRST_FRAMES))
            names = [
                spec.name
                for spec in self.layout.layers
                if spec.transparent
                or (spec.role == "background" and coin < BACKGROUND_FIRST_FRAME_PROBABILITY)
            ]
            task_layouts.append(self.layout.for_task(task, names))
            sigma = None
            if self.first_frame_noise:
                mean, std = FIRST_FRAME_NOISE_LOG_SIGMA
                draw = self.generator(step, micro_step, position, STREAM_FIRST_FRAME_SIGMA)
                sigma = float(torch.exp(mean + std * torch.randn((), generator=draw)))
            sigmas.append(sigma)
        return SampleDraws(task_layouts, sigmas)

    def noise(
        self,
        batch: ModelBatch,
        step: int,
        micro_step: int,
        positions: Sequence[int],
        draws: SampleDraws | None = None,
    ) -> NoisedBatch:
        """Noise the generated clips of every sample and build the model input, targets and loss mask.

        ``draws`` are what the encoder encoded first frames by (drawn here when absent)."""
        latents = batch.latents
        device, num_clips = latents.device, len(self.layout.clips)
        if len(batch.clip_frames) != num_clips or latents.shape[1] != sum(batch.clip_frames):
            raise ValueError(
                f"latents have {latents.shape[1]} frames in clips of {list(batch.clip_frames)}, the layout "
                f"has {num_clips} clips"
            )
        draws = draws or self.draw(step, micro_step, positions)
        tasks, task_layouts = draws.tasks, draws.task_layouts
        prompt_counts = {t.num_prompts for t in task_layouts}
        if len(prompt_counts) > 1:
            raise ValueError(f"tasks {sorted(set(tasks))} of one batch take different numbers of prompts")
        timesteps = torch.cat(
            [
                torch.randint(
                    0,
                    self.num_train_timesteps,
                    (1,),
                    generator=self.generator(step, micro_step, p, STREAM_TIMESTEP),
                )
                for p in positions
            ]
        ).to(device)
        noise = torch.stack(
            [
                torch.randn(latents.shape[1:], generator=self.generator(step, micro_step, p, STREAM_NOISE))
                for p in positions
            ]
        ).to(device=device, dtype=latents.dtype)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)  # type: ignore[attr-defined]
        target = self.scheduler.get_velocity(latents, noise, timesteps)  # type: ignore[attr-defined]
        loss_mask = condition_frame_mask(task_layouts, batch.clip_frames).to(device)
        model_input = torch.where(loss_mask[:, :, None, None, None].bool(), noisy.to(latents.dtype), latents)

        text = prompt_tokens(batch.prompt_embeds, task_layouts[0], self.tokens_per_prompt)
        if self.text_dropout > 0:
            num_prompts = task_layouts[0].num_prompts
            keep = torch.stack(
                [
                    torch.rand(num_prompts, generator=self.generator(step, micro_step, p, STREAM_DROPOUT))
                    >= self.text_dropout
                    for p in positions
                ]
            ).to(device)
            text = drop_prompts(text, keep, self.tokens_per_prompt)
        return NoisedBatch(model_input, text, timesteps, target, loss_mask, tasks, num_clips)


def masked_v_loss(prediction: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """MSE over the generated clips' latent frames, averaged per sample, then over the batch.

    ``prediction``/``target``: ``[B, F, C, h, w]``; ``loss_mask``: ``[B, F]`` (0 on condition clips).
    A condition clip's prediction does not enter the loss at all (its gradient is exactly zero).
    """
    squared = (prediction.float() - target.float()).pow(2).mean(dim=(2, 3, 4))
    per_sample = (squared * loss_mask).sum(1) / loss_mask.sum(1).clamp_min(1.0)
    return per_sample.mean()
