"""Trainer options measured against a reference run: gradient checkpointing, bf16 autocast, gradient
accumulation, LR warmup, EMA, the TensorBoard tracker, and a stock CogVideoX folder as the base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from layerflow.training.checkpointing import read_checkpoint
from layerflow.training.testing import reset_accelerate_state, tiny_test_config
from layerflow.training.trainer import LayerFlowTrainer


def trainer(root: Path, name: str, stage: int = 1, **sections: dict[str, Any]) -> LayerFlowTrainer:
    reset_accelerate_state()
    settings: dict[str, Any] = {
        "run": {"output_dir": str(root / name)},
        "data": {"cache_dir": str(root / "cache")},
    }
    for section, values in sections.items():
        settings.setdefault(section, {}).update(values)
    return LayerFlowTrainer(tiny_test_config(root, stage, settings))


def test_gradient_checkpointing_trains_identically(tmp_path: Path) -> None:
    plain = trainer(tmp_path, "plain", run={"max_steps": 3})
    plain_losses = plain.train().losses
    checkpointed = trainer(tmp_path, "ckpt", run={"max_steps": 3}, model={"gradient_checkpointing": True})
    losses = checkpointed.train().losses
    assert checkpointed.transformer.gradient_checkpointing and not plain.transformer.gradient_checkpointing
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), rtol=1e-5, atol=1e-6)
    for name, param in plain.trained.items():
        torch.testing.assert_close(checkpointed.trained[name], param, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_tracks_the_float32_run(tmp_path: Path) -> None:
    reference = trainer(tmp_path, "fp32", run={"max_steps": 2}).train().losses
    bf16 = trainer(tmp_path, "bf16", run={"max_steps": 2, "mixed_precision": "bf16"})
    losses = bf16.train().losses
    assert bf16.accelerator.mixed_precision == "bf16"
    assert all(p.dtype == torch.float32 for p in bf16.trained.values())  # master weights stay fp32
    assert losses != reference  # bf16 compute really ran
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference), rtol=0.05, atol=0.0)


def test_accumulation_warmup_and_ema(tmp_path: Path) -> None:
    run = trainer(
        tmp_path,
        "acc",
        run={"max_steps": 3, "checkpoint_every": 3, "ema_decay": 0.5},
        optim={"gradient_accumulation_steps": 3, "lr_warmup_steps": 4, "lr_scheduler": "linear"},
    )
    run.train()
    content, _ = read_checkpoint(tmp_path / "acc" / "checkpoints" / "checkpoint-3", 0)
    # 3 steps x 3 micro-batches of 2 = 18 samples: 2 epochs of 8 (4 batches each) and 1 batch in.
    assert (content.state["epoch"], content.state["batch_in_epoch"]) == (2, 1)
    assert run.lr_scheduler.get_last_lr()[0] == pytest.approx(1e-4 * 3 / 4)
    # EMA: d_n = min(0.5, (1 + n) / (10 + n)) = 0.1, 0.18..., 0.25; the export holds the shadow weights.
    exported = load_file(str(tmp_path / "acc" / "final" / "trained.safetensors"))
    assert exported.keys() == content.ema.keys()
    for name, shadow in content.ema.items():
        assert torch.equal(exported[name], shadow)
    assert any(not torch.equal(content.ema[n], content.trained[n]) for n in content.trained)
    assert content.state["ema_updates"] == 3


def test_tensorboard_tracker_logs_loss(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    trainer(tmp_path, "tb", run={"max_steps": 2, "tracker": "tensorboard"}).train()
    events = list((tmp_path / "tb" / "logs").rglob("events.out.tfevents.*"))
    assert events and any(b"loss" in path.read_bytes() for path in events)


def test_stock_cogvideox_folder_as_base(tmp_path: Path) -> None:
    """A diffusers CogVideoX folder (stock transformer class) starts stage 1; the layer embedder is new."""
    from diffusers import CogVideoXTransformer3DModel

    from layerflow.testing import build_tiny_pipeline, tiny_transformer_config
    from layerflow.tiny import TINY_PROMPT_TOKENS, tiny_words

    tiny = build_tiny_pipeline(words=tiny_words())
    folder = tmp_path / "cogvideox"
    config = tiny_transformer_config(num_layers=3, max_text_seq_length=TINY_PROMPT_TOKENS)
    for key in ("num_layer_prompts",):
        config.pop(key)
    CogVideoXTransformer3DModel(**config).save_pretrained(folder / "transformer")
    tiny.vae.save_pretrained(folder / "vae")
    tiny.text_encoder.save_pretrained(folder / "text_encoder")
    tiny.tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "CogVideoXPipeline"}))
    run = trainer(tmp_path, "stock", run={"max_steps": 1}, model={"base": str(folder)})
    result = run.train()
    assert len(result.losses) == 1
    assert any(name.startswith("patch_embed.layer_embedder.") for name in run.trained)


def test_on_the_fly_encoding_matches_the_cache_layout_and_text(tmp_path: Path) -> None:
    """On the fly and from the cache: the layout's clips in layout order (posterior mean x scale in the
    cache, a posterior draw on the fly) and the same layer-prompt embeddings."""
    from layerflow.data import collate_cached, collate_for_layout, encode_sample
    from layerflow.training.datasets import build_cached_mix, build_source
    from layerflow.training.encoding import BatchEncoder, prompt_encoder
    from layerflow.training.export import load_base
    from layerflow.training.objective import STREAM_POSTERIOR, sample_generator

    config = tiny_test_config(tmp_path, 1, {"data": {"cache_dir": str(tmp_path / "cache")}})
    pipeline = load_base(config)
    codec = pipeline.codec
    text_encoder = prompt_encoder(pipeline, pipeline.transformer.config.max_text_seq_length)
    dataset = build_source(config, config.data.sources[0])
    samples = [dataset[0], dataset[1]]
    cached = build_cached_mix(config, codec, text_encoder)
    cached.sources[0].sample_posterior = False
    encoder = BatchEncoder(
        codec, text_encoder=text_encoder, seed=0, device=torch.device("cpu"), dtype=torch.float32
    )
    fly = encoder(collate_for_layout(samples, codec.layout), step=2, micro_step=1, positions=[4, 5])
    from_cache = encoder(collate_cached([cached[0], cached[1]]), step=2, micro_step=1, positions=[4, 5])
    assert fly.latents.shape == from_cache.latents.shape == (2, 8, 4, 4, 4)
    assert fly.clip_frames == from_cache.clip_frames == (2, 2, 2, 2)
    assert torch.equal(fly.prompt_embeds, from_cache.prompt_embeds)
    scale = codec.geometry.scaling_factor
    for b, (sample, position) in enumerate(zip(samples, (4, 5), strict=True)):
        posterior, _ = encode_sample(codec, sample.layers)
        torch.testing.assert_close(from_cache.latents[b], posterior.mean[0] * scale)
        # One VAE pass per clip, each drawing its [1, C, t, h, w] noise in turn from the sample's generator.
        generator = sample_generator(0, 2, 1, position, STREAM_POSTERIOR)
        draws = [torch.randn(1, 4, 2, 4, 4, generator=generator)[0].permute(1, 0, 2, 3) for _ in range(4)]
        expected = (posterior.mean[0] + posterior.std[0] * torch.cat(draws)) * scale
        torch.testing.assert_close(fly.latents[b], expected)


def test_training_with_on_the_fly_encoding(tmp_path: Path) -> None:
    run = trainer(tmp_path, "fly", run={"max_steps": 2}, data={"precompute": False})
    losses = run.train().losses
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)
    assert not (tmp_path / "fly" / "cache").exists()
