"""Batches to latents + text embeddings: from the precompute cache, or encoded on the fly each step.

Both paths give the same thing: scaled VAE posterior samples of every clip in layout order and the
plain layer-prompt embeddings (no layer embedding; the transformer adds it) in
:data:`~layerflow.data.PROMPT_ROLES` order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from layer_embeddings import LayerPromptEncoder
from layerflow.data import CachedBatch, LayeredBatch, encode_latents
from layerflow.data.precompute import EncodeMode
from layerflow.data.sample import CLIP_ORDER

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
        clip_names: the data clip of each layout clip (:func:`.objective.layout_clip_names`).
        vae, text_encoder: used on the fly only (frozen, eval mode).
        encode_mode: ``"per_clip"`` or ``"joint"`` VAE encoding (as the cache's setting).
        seed: posterior draws use the per-sample stream of ``(seed, step, micro_step, position)``.
    """

    def __init__(
        self,
        clip_names: Sequence[str],
        *,
        vae: nn.Module,
        text_encoder: LayerPromptEncoder,
        encode_mode: EncodeMode,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.clip_indices = [CLIP_ORDER.index(name) for name in clip_names]
        self.vae = vae
        self.text_encoder = text_encoder
        self.encode_mode: EncodeMode = encode_mode
        self.seed = seed
        self.device = device
        self.dtype = dtype
        self.scaling_factor = float(cast(Any, vae).config.scaling_factor)

    def _layout_clips(self, latents: torch.Tensor, frames_per_clip: int) -> torch.Tensor:
        """``[B, C, 4 * t, h, w]`` in CLIP_ORDER -> ``[B, F, C, h, w]`` in layout order."""
        clips = latents.split(frames_per_clip, dim=2)
        return torch.cat([clips[i] for i in self.clip_indices], dim=2).permute(0, 2, 1, 3, 4)

    def __call__(
        self, batch: LayeredBatch | CachedBatch, step: int, micro_step: int, positions: Sequence[int]
    ) -> ModelBatch:
        if isinstance(batch, CachedBatch):
            latents = self._layout_clips(batch.latents, batch.latent_frames_per_clip)
            embeds, frames = batch.prompt_embeds, batch.latent_frames_per_clip
        else:
            latents, frames = self._encode_latents(batch, step, micro_step, positions)
            with torch.no_grad():
                embeds = self.text_encoder(
                    batch.layer_prompts(), device=self.device, dtype=self.dtype
                ).embeddings
        return ModelBatch(
            latents=latents.to(self.device, torch.float32),
            prompt_embeds=embeds.to(self.device, torch.float32),  # autocast casts per op
            is_static=batch.is_static.to(self.device),
            clip_frames=frames,
            sample_ids=list(batch.sample_ids),
        )

    @torch.no_grad()
    def _encode_latents(
        self, batch: LayeredBatch, step: int, micro_step: int, positions: Sequence[int]
    ) -> tuple[torch.Tensor, int]:
        inputs = batch.to_model_inputs()
        samples = []
        frames = 0
        for b, position in enumerate(positions):
            one = type(inputs)(**{name: getattr(inputs, name)[b] for name in CLIP_ORDER})
            mean, std, frames = encode_latents(self.vae, one, self.encode_mode)
            noise = torch.randn(
                mean.shape,
                generator=sample_generator(self.seed, step, micro_step, position, STREAM_POSTERIOR),
            )
            samples.append((mean + std * noise) * self.scaling_factor)
        return self._layout_clips(torch.stack(samples), frames), frames
