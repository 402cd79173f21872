"""Teacher-forced diagnostics: does the transformer denoise held-out latents, and does it read the text?

Sampling mixes every source of error (the sampler, the VAE, the model); this isolates the model.
For held-out samples, the true latents of the generated clips are noised at a fixed timestep ``t``
(condition clips stay clean, as in training and sampling), the transformer predicts ``v``, and the
implied clean latents ``x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v`` are compared with the truth
(mean squared error over the generated clips). The same noise is then used with the prompts of
another held-out sample ("shuffled"): a model that uses its text is worse with the wrong prompts.
``x0 = 0`` (predicting the mean of a unit-variance latent) would score about the latents' variance.

:func:`vae_round_trip` isolates the VAE the same way: the held-out truth encoded and decoded exactly
as generated latents are, then scored like any model's output, is what no model can beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerflow.layout import LayerLayout
from layerflow.media import OutputLayer, write_output_dir
from layerflow.metrics import EvaluationReport, LayeredClip, evaluate_output_dir, read_reference_sample
from layerflow.pipelines import LayerFlowPipeline
from layerflow.training.encoding import prompt_encoder
from layerflow.training.objective import condition_frame_mask, prompt_tokens

#: Timesteps the diagnostics probe (of the schedule's 1000): nearly clean to nearly pure noise.
PROBE_TIMESTEPS: tuple[int, ...] = (50, 200, 400, 600, 800, 950)


@dataclass
class HeldOutLatents:
    """Clean scaled latents ``[N, F, C, h, w]`` (layout order) and prompt embeddings ``[N, L * S, D]``."""

    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    clip_frames: tuple[int, ...]


def _layer_frames(clip: LayeredClip, layout: LayerLayout, folder: Path) -> dict[str, torch.Tensor]:
    """The sample's frames by layout layer name, ``[1, T, C, H, W]`` (foregrounds RGBA)."""
    frames: dict[str, torch.Tensor] = {}
    for spec in layout.layers:
        if spec.role == "foreground":
            if clip.foreground is None or clip.alpha is None:
                raise ValueError(
                    f"held-out sample {folder} lacks its foreground; the diagnostics need every layer"
                )
            frames[spec.name] = torch.cat([clip.foreground, clip.alpha[:, :1]], dim=1)[None]
        else:
            layer = getattr(clip, spec.role)
            if layer is None:
                raise ValueError(
                    f"held-out sample {folder} lacks its {spec.role}; the diagnostics need every layer"
                )
            frames[spec.name] = layer[None]
    return frames


@torch.no_grad()
def encode_heldout(pipeline: LayerFlowPipeline, sample_dirs: Sequence[Path]) -> HeldOutLatents:
    """Every clip's latents (through the pipeline's codec) and the plain prompt embeddings of held-out folders."""
    codec, layout = pipeline.codec, pipeline.layer_layout
    encoder = prompt_encoder(pipeline, pipeline.geometry.text_tokens_per_prompt)
    latents, prompts = [], []
    geometry = None
    for folder in sample_dirs:
        clip = read_reference_sample(folder)
        frames = {name: f.to(pipeline.vae.device) for name, f in _layer_frames(clip, layout, folder).items()}
        t, _, h, w = next(iter(frames.values())).shape[1:]
        geometry = codec.geometry.check(t, h, w, layout)
        latents.append(codec.encode(frames, geometry).mean[0] * pipeline.geometry.scaling_factor)
        prompts.append([clip.prompts.get(spec.role, "") for spec in layout.layers])
    if geometry is None:
        raise ValueError("the teacher-forced diagnostics need held-out samples")
    embeds = encoder(prompts, device=pipeline.vae.device).embeddings.float()
    return HeldOutLatents(torch.stack(latents).float(), embeds, tuple(geometry.clip_latent_frames))


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
    tokens = pipeline.geometry.text_tokens_per_prompt
    num_clips = len(data.clip_frames)
    text = prompt_tokens(data.prompt_embeds, task_layout, tokens)
    mask = condition_frame_mask([task_layout] * count, data.clip_frames)
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


@torch.no_grad()
def vae_round_trip(
    pipeline: LayerFlowPipeline, sample_dirs: Sequence[Path], out: Path
) -> list[EvaluationReport]:
    """The VAE's ceiling on every target: each held-out sample's layers encoded (posterior mean) and
    decoded by the pipeline's codec, as generated latents are decoded, written to ``out/<id>/`` as a
    ``decompose`` output folder (every layer, the sample's prompts) and scored against the truth by
    the same metrics as the models' outputs."""
    codec, layout = pipeline.codec, pipeline.layer_layout
    reports = []
    for folder in sample_dirs:
        clip = read_reference_sample(folder)
        frames = {name: f.to(pipeline.vae.device) for name, f in _layer_frames(clip, layout, folder).items()}
        t, _, h, w = next(iter(frames.values())).shape[1:]
        geometry = codec.geometry.check(t, h, w, layout)
        decoded = codec.decode(
            codec.encode(frames, geometry).mean * pipeline.geometry.scaling_factor, geometry
        )
        layers = [
            OutputLayer(
                spec.name, spec.role, decoded[spec.name][0].float().cpu(), clip.prompts.get(spec.role)
            )
            for spec in layout.layers
        ]
        target = write_output_dir(
            out / folder.name, layers, task="decompose", formats=["png"], previews=False, overwrite=True
        )
        reports.append(evaluate_output_dir(target, reference=folder))
    return reports
