"""Tiny, download-free LayerFlow models for tests, examples, benchmarks and demos.

Everything is built from configs with fixed seeds: a 1-block transformer (2 heads x 8 dims), a tiny
CogVideoX VAE (4x spatial, 4x temporal compression, 4 latent channels), a word-level tokenizer and a
tiny T5. Prompts are 12 tokens per layer instead of the official 226 (``max_text_seq_length``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl_cogvideox import AutoencoderKLCogVideoX

from layer_embeddings.testing import build_tiny_t5_encoder, build_word_tokenizer

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
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread: tiny models are dominated by thread overhead on shared machines."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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


def random_layer_frames(
    layout: LayerLayout, num_frames: int = 8, height: int = 16, width: int = 16, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random frames for every layer: foregrounds RGBA (straight alpha), others RGB, ``[T, C, H, W]`` in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    frames: dict[str, torch.Tensor] = {}
    for spec in layout.layers:
        channels = 4 if spec.transparent else 3
        frames[spec.name] = torch.rand(num_frames, channels, height, width, generator=generator)
    return frames


# ------------------------------------------------------------------ official (SAT) checkpoints
#: Attention projections that carry the official motion/content LoRAs.
LORA_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
_SAT = "model.diffusion_model."
_SAT_GLOBALS = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "mixins.patch_embed.proj": "patch_embed.proj",
    "mixins.patch_embed.text_proj": "patch_embed.text_proj",
    "transformer.final_layernorm": "norm_final",
    "mixins.final_layer.norm_final": "norm_out.norm",
    "mixins.final_layer.linear": "proj_out",
    "mixins.final_layer.adaLN_modulation.1": "norm_out.linear",
    "mixins.pos_embed.txt_embedder.0": "patch_embed.layer_embedder.embed.0",
    "mixins.pos_embed.txt_embedder.1": "patch_embed.layer_embedder.embed.1",
}
LoraFactors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def random_lora_factors(model: torch.nn.Module, rank: int, seed: int) -> LoraFactors:
    """Random ``(down, up)`` factors for every LoRA projection of ``model``."""
    generator = torch.Generator().manual_seed(seed)
    factors: LoraFactors = {}
    for name, module in model.named_modules():
        if name.endswith(LORA_PROJECTIONS):
            factors[name] = (
                torch.randn(rank, module.in_features, generator=generator) * 0.3,
                torch.randn(module.out_features, rank, generator=generator) * 0.3,
            )
    return factors


def official_state_dict(
    model: LayerFlowTransformer3DModel,
    motion: LoraFactors,
    content: LoraFactors,
    position_table: torch.Tensor | None = None,
    position_frames: int = 8,
) -> dict[str, torch.Tensor]:
    """``model`` in the official SAT naming: the inverse of the documented SAT -> diffusers mapping,
    written independently of ``layerflow.convert`` so that a round trip tests it."""
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for i in range(len(model.transformer_blocks)):
        b, layer = f"transformer_blocks.{i}.", f"{_SAT}transformer.layers.{i}."
        for ours, sat in (("norm1.norm", "input_layernorm"), ("norm2.norm", "post_attention_layernorm")):
            for p in ("weight", "bias"):
                out[f"{layer}{sat}.{p}"] = sd[f"{b}{ours}.{p}"]
        for p in ("weight", "bias"):
            out[f"{layer}attention.query_key_value.original.{p}"] = torch.cat(
                [sd[f"{b}attn1.{n}.{p}"] for n in ("to_q", "to_k", "to_v")]
            )
            out[f"{layer}attention.dense.original.{p}"] = sd[f"{b}attn1.to_out.0.{p}"]
            out[f"{layer}mlp.dense_h_to_4h.{p}"] = sd[f"{b}ff.net.0.proj.{p}"]
            out[f"{layer}mlp.dense_4h_to_h.{p}"] = sd[f"{b}ff.net.2.{p}"]
            one, two = sd[f"{b}norm1.linear.{p}"].chunk(6), sd[f"{b}norm2.linear.{p}"].chunk(6)
            out[f"{_SAT}mixins.adaln_layer.adaLN_modulations.{i}.1.{p}"] = torch.cat(
                one[:3] + two[:3] + one[3:] + two[3:]
            )
            out[f"{_SAT}mixins.adaln_layer.query_layernorm_list.{i}.{p}"] = sd[f"{b}attn1.norm_q.{p}"]
            out[f"{_SAT}mixins.adaln_layer.key_layernorm_list.{i}.{p}"] = sd[f"{b}attn1.norm_k.{p}"]
        for letters, factors in ((("A", "B"), motion), (("C", "D"), content)):
            for index, name in enumerate(("to_q", "to_k", "to_v")):
                down, up = factors[f"{b}attn1.{name}"]
                out[f"{layer}attention.query_key_value.matrix_{letters[0]}.{index}"] = down
                out[f"{layer}attention.query_key_value.matrix_{letters[1]}.{index}"] = up
            down, up = factors[f"{b}attn1.to_out.0"]
            out[f"{layer}attention.dense.matrix_{letters[0]}.0"] = down
            out[f"{layer}attention.dense.matrix_{letters[1]}.0"] = up
    for sat, ours in _SAT_GLOBALS.items():
        for p in ("weight", "bias"):
            out[f"{_SAT}{sat}.{p}"] = sd[f"{ours}.{p}"]
    if position_table is None:
        position_table = build_tiny_transformer(
            learned_position_frames=position_frames, num_layer_prompts=3
        ).patch_embed.position_table
    assert position_table is not None
    out[f"{_SAT}mixins.pos_embed.pos_embedding"] = position_table.detach().clone()
    out["conditioner.embedders.0.transformer.shared.weight"] = torch.zeros(4, 4)  # T5: skipped
    out["first_stage_model.encoder.conv_in.weight"] = torch.zeros(4)  # VAE: skipped
    return out


def write_official_checkpoint(root: str | os.PathLike[str], module: Any, name: str = "exp") -> Path:
    """An official experiment folder ``root/name`` (``latest`` -> ``1000/mp_rank_00_model_states.pt``)."""
    experiment = Path(root) / name
    (experiment / "1000").mkdir(parents=True)
    torch.save({"module": module, "iteration": 1000}, experiment / "1000" / "mp_rank_00_model_states.pt")
    (experiment / "latest").write_text("1000\n")
    return experiment
