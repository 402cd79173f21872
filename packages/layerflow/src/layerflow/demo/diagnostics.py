"""Teacher-forced diagnostics: does the transformer denoise held-out latents, and does it read the text?

Sampling mixes every source of error (the sampler, the VAE, the model); this isolates the model.
For held-out samples, the true latents of the generated clips are noised at a fixed timestep ``t``
(condition clips stay clean, as in training and sampling), the transformer predicts ``v``, and the
implied clean latents ``x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v`` are compared with the truth
(mean squared error over the generated clips). The same noise is then used with the prompts of
another held-out sample ("shuffled"): a model that uses its text is worse with the wrong prompts.
``x0 = 0`` (predicting the mean of a unit-variance latent) would score about the latents' variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerflow.data import CLIP_ORDER, PROMPT_ROLES, encode_latents, to_model_inputs
from layerflow.metrics import read_reference_sample
from layerflow.pipelines import LayerFlowPipeline
from layerflow.training.encoding import prompt_encoder
from layerflow.training.objective import condition_frame_mask, layout_clip_names, prompt_tokens

#: Timesteps the diagnostics probe (of the schedule's 1000): nearly clean to nearly pure noise.
PROBE_TIMESTEPS: tuple[int, ...] = (50, 200, 400, 600, 800, 950)


@dataclass
class HeldOutLatents:
    """Clean latents ``[N, F, C, h, w]`` (layout order, scaled) and prompt embeddings ``[N, 3 * S, D]``."""

    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    clip_frames: int


@torch.no_grad()
def encode_heldout(pipeline: LayerFlowPipeline, sample_dirs: Sequence[Path]) -> HeldOutLatents:
    """The posterior means of every clip and the plain prompt embeddings of held-out sample folders."""
    vae, tokens = pipeline.vae, int(pipeline.transformer.config.max_text_seq_length)
    order = [CLIP_ORDER.index(name) for name in layout_clip_names(pipeline.layer_layout)]
    encoder = prompt_encoder(pipeline, tokens)
    latents, prompts, frames = [], [], 0
    for folder in sample_dirs:
        clip = read_reference_sample(folder)
        if clip.foreground is None or clip.alpha is None or clip.background is None or clip.composite is None:
            raise ValueError(f"held-out sample {folder} lacks a layer; the diagnostics need all four")
        inputs = to_model_inputs(clip.foreground, clip.alpha, clip.background, clip.composite)
        inputs = type(inputs)(**{name: getattr(inputs, name).to(vae.device) for name in CLIP_ORDER})
        mean, _, frames = encode_latents(vae, inputs, "per_clip")
        clips = mean.split(frames, dim=1)
        latents.append(torch.cat([clips[i] for i in order], dim=1).permute(1, 0, 2, 3))
        prompts.append([clip.prompts[role] for role in PROMPT_ROLES])
    embeds = encoder(prompts, device=vae.device).embeddings.float()
    scale = float(vae.config.scaling_factor)
    return HeldOutLatents(torch.stack(latents) * scale, embeds, frames)


@torch.no_grad()
def x0_errors(
    pipeline: LayerFlowPipeline,
    data: HeldOutLatents,
    task: str = "generate",
    timesteps: Sequence[int] = PROBE_TIMESTEPS,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean squared x0 error on the generated clips per timestep, correct vs shuffled prompts.

    Shuffled: sample ``i`` gets the prompts of sample ``i + 1`` (needs two or more samples).
    """
    count = data.latents.shape[0]
    if count < 2:
        raise ValueError("the teacher-forced diagnostics need at least 2 held-out samples to shuffle prompts")
    transformer, scheduler = pipeline.transformer, pipeline.scheduler
    task_layout = pipeline.layer_layout.for_task(task)
    tokens = int(transformer.config.max_text_seq_length)
    num_clips = data.latents.shape[1] // data.clip_frames
    text = prompt_tokens(data.prompt_embeds, task_layout, tokens)
    mask = condition_frame_mask([task_layout] * count, num_clips, data.clip_frames)
    device = data.latents.device
    alphas = scheduler.alphas_cumprod.to(device)
    generator = torch.Generator().manual_seed(seed)
    mask = mask.to(device)
    generated = mask[:, :, None, None, None].bool()
    transformer.eval()
    rows: dict[str, dict[str, float]] = {"correct": {}, "shuffled": {}}
    for t in timesteps:
        noise = torch.randn(data.latents.shape, generator=generator).to(device)
        steps = torch.full((count,), int(t), dtype=torch.long, device=device)
        noisy = torch.where(generated, scheduler.add_noise(data.latents, noise, steps), data.latents)
        for name, prompt in (("correct", text), ("shuffled", text.roll(1, dims=0))):
            v = transformer(noisy, prompt, steps, num_clips=num_clips, return_dict=False)[0]
            x0 = alphas[t].sqrt() * noisy - (1 - alphas[t]).sqrt() * v
            squared = (x0 - data.latents).pow(2).mean(dim=(2, 3, 4))
            rows[name][str(t)] = float((squared * mask).sum() / mask.sum())
    variance = float(data.latents.masked_select(generated.expand_as(data.latents)).var())
    return {"task": task, "latent_variance": variance, **rows}
