"""Tiny, download-free LayerFlow models: the demo, the trainer's ``model.base = "tiny"``, examples, tests.

Everything is built from configs with fixed seeds: a 1-block transformer (2 heads x 8 dims), a tiny
CogVideoX VAE (4x spatial, 4x temporal compression, 4 latent channels), a word-level tokenizer over
the tiny vocabulary (:func:`tiny_words`: the synthetic captions' words) and a tiny T5. Prompts are
12 tokens per layer instead of the official 226 (``max_text_seq_length``). Production code imports
from here; :mod:`layerflow.testing` adds test-only helpers on top.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl_cogvideox import AutoencoderKLCogVideoX

from layer_embeddings.tiny import build_tiny_t5_encoder, build_word_tokenizer

from .layout import LayerLayout
from .models import LayerFlowTransformer3DModel, LayerFlowTransparentVAE
from .pipelines import LayerFlowPipeline
from .pipelines.scheduling import SchedulerKind, make_scheduler

TINY_TEXT_WIDTH = 16
TINY_TEXT_LENGTH = 12
TINY_WORDS = (
    "a red circle moving left over blue stripes drifting up a green square bouncing on a grey field "
    "with yellow dots the fox snow forest"
)
#: Tokens per layer prompt of the tiny training model: the synthetic captions need up to 14.
TINY_PROMPT_TOKENS = 16
#: Words of the captions the trainer and the demo compose around the synthetic vocabulary.
CAPTION_WORDS = "a an the on over in front of with and moving still background foreground is"


def tiny_words() -> list[str]:
    """The tiny vocabulary: the synthetic captions' words, so no training prompt is UNK."""
    from layerflow.synthetic import vocabulary

    words = set(TINY_WORDS.split()) | set(CAPTION_WORDS.split())
    for name in dir(vocabulary):
        value = getattr(vocabulary, name)
        if name.isupper() and isinstance(value, (dict, tuple)):
            words |= {w for item in value for w in str(item).split()}
    return sorted(words)


def tiny_transformer_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "in_channels": 4,
        "out_channels": 4,
        "time_embed_dim": 16,
        "text_embed_dim": TINY_TEXT_WIDTH,
        "num_layers": 1,
        "sample_width": 4,
        "sample_height": 4,
        "sample_frames": 5,
        "max_text_seq_length": TINY_TEXT_LENGTH,
        "num_layer_prompts": 4,
    }
    config.update(overrides)
    return config


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch on exactly ``count`` CPU threads, then restore the previous count.

    A fixed count, not the machine's: CPU reductions split work by thread, so the count is part of
    what makes a run's numbers reproducible from one machine to another.
    """
    if count < 1:
        raise ValueError(f"torch_threads needs count >= 1, got {count}")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def single_thread() -> contextlib.AbstractContextManager[None]:
    """Run torch on one CPU thread: tiny models are dominated by thread overhead on shared machines."""
    return torch_threads(1)


def _seeded(seed: int, build: Any) -> Any:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def build_tiny_transformer(seed: int = 0, **overrides: Any) -> LayerFlowTransformer3DModel:
    """A tiny transformer with a NON-zero layer embedding (so layers are told apart)."""

    def build() -> LayerFlowTransformer3DModel:
        model = LayerFlowTransformer3DModel(**tiny_transformer_config(**overrides))
        embedder = model.patch_embed.layer_embedder
        if embedder is not None:
            for param in embedder.parameters():
                torch.nn.init.normal_(param, std=0.5)
        return model.eval()

    return _seeded(seed, build)


def build_tiny_vae(seed: int = 0, latent_channels: int = 4) -> AutoencoderKLCogVideoX:
    return _seeded(
        seed,
        lambda: AutoencoderKLCogVideoX(
            block_out_channels=(8, 8, 8),
            down_block_types=("CogVideoXDownBlock3D",) * 3,
            up_block_types=("CogVideoXUpBlock3D",) * 3,
            latent_channels=latent_channels,
            layers_per_block=1,
            norm_num_groups=4,
            temporal_compression_ratio=4,
        ).eval(),
    )


def build_tiny_transparent_vae(vae: AutoencoderKLCogVideoX, seed: int = 0) -> LayerFlowTransparentVAE:
    """A tiny transparent VAE for ``vae`` (zero-initialised offset: encoding equals the base VAE's mean)."""
    return _seeded(
        seed,
        lambda: LayerFlowTransparentVAE.for_vae(
            vae,
            encoder_channels=(8, 8, 8),
            decoder_channels=(8, 8, 8, 8),
            norm_num_groups=4,
            layers_per_block=1,
        ).eval(),
    )


def build_tiny_pipeline(
    layout: LayerLayout | None = None,
    *,
    scheduler: SchedulerKind = "dpm",
    words: Iterable[str] = (TINY_WORDS,),
    seed: int = 0,
    **transformer_overrides: Any,
) -> LayerFlowPipeline:
    """A complete tiny pipeline (16x16 pixels by default, 12 text tokens per layer prompt).

    ``latent_offset`` layouts get a tiny transparent VAE.
    """
    tokenizer = build_word_tokenizer(list(words), model_max_length=TINY_TEXT_LENGTH)
    layout = layout or LayerLayout.official()
    vae = build_tiny_vae(seed)
    return LayerFlowPipeline(
        tokenizer=tokenizer,
        text_encoder=build_tiny_t5_encoder(len(tokenizer), d_model=TINY_TEXT_WIDTH, num_layers=1, seed=seed),
        vae=vae,
        transformer=build_tiny_transformer(seed, **transformer_overrides),
        scheduler=make_scheduler(scheduler),
        transparent_vae=build_tiny_transparent_vae(vae, seed) if layout.alpha == "latent_offset" else None,
        layout=layout.to_dict(),
    )


def build_tiny_training_pipeline(
    seed: int = 0, num_layers: int = 3, layout: LayerLayout | None = None
) -> LayerFlowPipeline:
    """The trainer's ``model.base = "tiny"``: :func:`build_tiny_pipeline` over the tiny vocabulary,
    ``num_layers`` blocks and :data:`TINY_PROMPT_TOKENS`-token prompts (a tiny transparent VAE for
    ``latent_offset`` layouts)."""
    pipeline = build_tiny_pipeline(
        layout,
        words=tiny_words(),
        seed=seed,
        num_layers=num_layers,
        max_text_seq_length=TINY_PROMPT_TOKENS,
    )
    pipeline.tokenizer.model_max_length = TINY_PROMPT_TOKENS
    return pipeline
