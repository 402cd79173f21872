"""Batches to latents + text embeddings: from the precompute cache, or encoded on the fly each step.

Both paths give the same thing: scaled VAE posterior samples of every clip of the model's layout in
layout order, and the plain layer-prompt embeddings (no layer embedding; the transformer adds it),
one prompt per layout layer in layout order. The on-the-fly path encodes exactly as the precompute
cache does (:func:`~layerflow.data.encode_latents`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from layer_embeddings import LayerPromptEncoder
from layerflow.data import CachedBatch, LayeredBatch, encode_latents
from layerflow.data.precompute import EncodeMode
from layerflow.layout import LayerLayout

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
        layout: the model's layer layout; on-the-fly batches are named by it (``collate_for_layout``).
        vae, transparent_vae, text_encoder: used on the fly only (frozen, eval mode); the transparent
            VAE for ``latent_offset`` layouts.
        encode_mode: ``"per_clip"`` or ``"joint"`` VAE encoding (as the cache's setting).
        seed: posterior draws use the per-sample stream of ``(seed, step, micro_step, position)``.
    """

    def __init__(
        self,
        layout: LayerLayout,
        *,
        vae: nn.Module,
        text_encoder: LayerPromptEncoder,
        encode_mode: EncodeMode,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
        transparent_vae: nn.Module | None = None,
    ):
        self.layout = layout
        self.vae = vae
        self.transparent_vae = transparent_vae
        self.text_encoder = text_encoder
        self.encode_mode: EncodeMode = encode_mode
        self.seed = seed
        self.device = device
        self.dtype = dtype
        self.scaling_factor = float(cast(Any, vae).config.scaling_factor)

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
            latents=latents.permute(0, 2, 1, 3, 4).to(self.device, torch.float32),  # [B, F, C, h, w]
            prompt_embeds=embeds.to(self.device, torch.float32),  # autocast casts per op
            is_static=batch.is_static.to(self.device),
            clip_frames=tuple(frames),
            sample_ids=list(batch.sample_ids),
        )

    @torch.no_grad()
    def encode_latents(
        self, batch: LayeredBatch, step: int, micro_step: int, positions: Sequence[int]
    ) -> tuple[torch.Tensor, list[int]]:
        """Scaled posterior samples ``[B, C, F, h, w]`` of every sample's layout clips, and clip frames."""
        samples = []
        frames: list[int] = []
        for b, position in enumerate(positions):
            layers = {name: layer.map(lambda t, b=b: t[b]) for name, layer in batch.layers.items()}
            mean, std, frames = encode_latents(
                self.vae, layers, self.layout, self.encode_mode, self.transparent_vae
            )
            noise = torch.randn(
                mean.shape,
                generator=sample_generator(self.seed, step, micro_step, position, STREAM_POSTERIOR),
            )
            samples.append((mean + std * noise) * self.scaling_factor)
        return torch.stack(samples), frames
