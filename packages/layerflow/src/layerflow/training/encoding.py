"""Batches to latents + text embeddings: from the precompute cache, or encoded on the fly each step.

Both paths give the same thing: scaled VAE posterior samples of every clip of the model's layout in
layout order, and the plain layer-prompt embeddings (no layer embedding; the transformer adds it),
one prompt per layout layer in layout order. Both encode through the pipeline's
:class:`~layerflow.codec.ClipCodec` (:func:`~layerflow.data.encode_sample`), so a sample's latents are
what the pipeline encodes for the same frames as conditions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from layer_embeddings import LayerPromptEncoder
from layerflow.codec import ClipCodec
from layerflow.data import CachedBatch, LayeredBatch, encode_sample

from .objective import STREAM_POSTERIOR, ModelBatch, sample_generator


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
        self, batch: LayeredBatch | CachedBatch, step: int, micro_step: int, positions: Sequence[int]
    ) -> ModelBatch:
        if isinstance(batch, CachedBatch):
            latents, embeds, frames = batch.latents, batch.prompt_embeds, batch.clip_frames
        else:
            latents, frames = self.encode_latents(batch, step, micro_step, positions)
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
        self, batch: LayeredBatch, step: int, micro_step: int, positions: Sequence[int]
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Scaled posterior samples ``[B, F, C, h, w]`` of every sample's layout clips, and clip frames."""
        samples = []
        frames: tuple[int, ...] = ()
        for b, position in enumerate(positions):
            posterior, geometry = encode_sample(self.codec, batch.sample_layers(b))
            generator = sample_generator(self.seed, step, micro_step, position, STREAM_POSTERIOR)
            samples.append(posterior.sample(generator)[0].float().cpu())
            frames = geometry.clip_latent_frames
        return torch.stack(samples), frames
