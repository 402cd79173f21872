"""Batches to latents + text embeddings: from the precompute cache, or encoded on the fly each step.

Both paths give the same thing: scaled VAE posterior samples of every clip of the model's layout in
layout order, and the plain layer-prompt embeddings (no layer embedding; the transformer adds it),
one prompt per layout layer in layout order. Both encode through the pipeline's
:class:`~layerflow.codec.ClipCodec` (:func:`~layerflow.data.encode_sample`), so a sample's latents are
what the pipeline encodes for the same frames as conditions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from layer_embeddings import LayerPromptEncoder
from layerflow.codec import ClipCodec
from layerflow.data import CachedBatch, Layer, LayeredBatch, encode_sample
from layerflow.layout import TaskLayout

from .objective import (
    STREAM_FIRST_FRAME_NOISE,
    STREAM_FIRST_FRAME_POSTERIOR,
    STREAM_POSTERIOR,
    ModelBatch,
    SampleDraws,
    sample_generator,
)


def prompt_encoder(pipeline: object, tokens_per_prompt: int) -> LayerPromptEncoder:
    """The pipeline's T5 as a layer-prompt encoder without a layer embedder (what the cache stores)."""
    return LayerPromptEncoder(
        pipeline.text_encoder,  # type: ignore[attr-defined]
        pipeline.tokenizer,  # type: ignore[attr-defined]
        max_length=tokens_per_prompt,
        unconditional="zeros",
    )


class BatchEncoder:
    """Turns a :class:`LayeredBatch` (pixels, prompts) or :class:`CachedBatch` into a :class:`ModelBatch`.

    Args:
        codec: the pipeline's clip codec (``pipeline.codec``: layout, VAE pass mode, VAE, transparent VAE), used on the
            fly only; on-the-fly batches are named by its layout (``collate_for_layout``).
        text_encoder: used on the fly only (frozen, eval mode).
        seed: posterior draws use the per-sample generator of ``(seed, step, micro_step, position)``,
            drawn as the pipeline draws a condition's posterior (:meth:`LatentPosterior.sample`).
    """

    def __init__(
        self,
        codec: ClipCodec,
        *,
        text_encoder: LayerPromptEncoder,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.codec = codec
        self.layout = codec.layout
        self.text_encoder = text_encoder
        self.seed = seed
        self.device = device
        self.dtype = dtype

    def __call__(
        self,
        batch: LayeredBatch | CachedBatch,
        step: int,
        micro_step: int,
        positions: Sequence[int],
        draws: SampleDraws | None = None,
    ) -> ModelBatch:
        """The model batch; samples that ``draws`` gave first frames carry their first-frame
        condition latents in those slots (encoded as the pipeline encodes a first frame)."""
        if isinstance(batch, CachedBatch):
            if draws is not None and any(t.first_frames for t in draws.task_layouts):
                raise ValueError(
                    "first-frame tasks encode first frames on their own: train without the cache"
                )
            latents, embeds, frames = batch.latents, batch.prompt_embeds, batch.clip_frames
        else:
            latents, frames = self.encode_latents(batch, step, micro_step, positions, draws)
            prompts = [
                [batch.prompts[spec.name][b] for spec in self.layout.layers] for b in range(len(batch))
            ]
            with torch.no_grad():
                embeds = self.text_encoder(prompts, device=self.device, dtype=self.dtype).embeddings
        return ModelBatch(
            latents=latents.to(self.device, torch.float32),
            prompt_embeds=embeds.to(self.device, torch.float32),  # autocast casts per op
            is_static=batch.is_static.to(self.device),
            clip_frames=tuple(frames),
            sample_ids=list(batch.sample_ids),
        )

    @torch.no_grad()
    def encode_latents(
        self,
        batch: LayeredBatch,
        step: int,
        micro_step: int,
        positions: Sequence[int],
        draws: SampleDraws | None = None,
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Scaled posterior samples ``[B, F, C, h, w]`` of every sample's layout clips, and clip frames
        (first-frame slots: the first-frame condition latents of the samples ``draws`` gave them)."""
        samples = []
        frames: tuple[int, ...] = ()
        for b, position in enumerate(positions):
            layers = batch.sample_layers(b)
            posterior, geometry = encode_sample(self.codec, layers)
            generator = sample_generator(self.seed, step, micro_step, position, STREAM_POSTERIOR)
            latents = posterior.sample(generator)[0].float().cpu()
            if draws is not None and draws.task_layouts[b].first_frames:
                sigma = draws.first_frame_sigmas[b]
                task_layout = draws.task_layouts[b]
                first = self.first_frame_latents(layers, task_layout, sigma, (step, micro_step, position))
                slots = list(task_layout.first_frame_latent_frames(geometry.clip_latent_frames))
                latents[slots] = first[slots]
            samples.append(latents)
            frames = geometry.clip_latent_frames
        return torch.stack(samples), frames

    def first_frame_latents(
        self,
        layers: Mapping[str, Layer],
        task_layout: TaskLayout,
        sigma: float | None,
        draw: tuple[int, int, int],
    ) -> torch.Tensor:
        """``[F, C, h, w]`` latents, valid at the first-frame slots: the first frames of
        ``task_layout.first_frames`` (noised by ``sigma`` in model range, CogVideoX I2V style)
        encoded as the pipeline encodes first-frame conditions."""
        first = {name: layers[name].frames[None, :1] for name in task_layout.first_frames}
        if sigma is not None:
            noise = sample_generator(self.seed, *draw, STREAM_FIRST_FRAME_NOISE)
            first = {name: f + sigma / 2 * torch.randn(f.shape, generator=noise) for name, f in first.items()}
        t, _, h, w = next(iter(layers.values())).rgb.shape
        geometry = self.codec.geometry.check(t, h, w, self.layout)
        posterior = self.codec.encode(
            first, geometry, task_layout.first_frame_clips, task_layout.first_frames
        )
        generator = sample_generator(self.seed, *draw, STREAM_FIRST_FRAME_POSTERIOR)
        return posterior.sample(generator)[0].float().cpu()
