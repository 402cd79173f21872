"""Teacher-forced diagnostics: the x0 formula, and that a briefly trained demo model reads its prompts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from layerflow.demo import DemoSettings
from layerflow.demo.assets import DemoAssetConfig, load_or_build_assets
from layerflow.demo.base import BaseRecipe, build_base_transformer
from layerflow.demo.diagnostics import HeldOutLatents, encode_heldout, x0_errors
from layerflow.demo.run import make_data, save_base, stage_overrides
from layerflow.pipelines import LayerFlowPipeline
from layerflow.training.objective import prompt_tokens

ASSETS = DemoAssetConfig(
    height=16,
    width=16,
    num_frames=4,
    vae_channels=(8, 8, 8),
    latent_channels=4,
    vae_steps=2,
    vae_train_samples=2,
    vae_eval_samples=2,
    text_width=16,
    text_layers=1,
    prompt_tokens=14,
)
SETTINGS = replace(
    DemoSettings(),
    num_train=4,
    num_heldout=2,
    batch_size=4,
    base=BaseRecipe(num_attention_heads=2, attention_head_dim=16, time_embed_dim=32, num_layers=2),
    assets=ASSETS,
)


@pytest.fixture(scope="module")
def briefly_trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[LayerFlowPipeline, LayerFlowPipeline, Path]:
    """The demo's model before and after 400 stage-1 steps on its 4 training samples (generate only)."""
    from layerflow.training import load_config, train

    root = tmp_path_factory.mktemp("diagnostics")
    train_root, _ = make_data(SETTINGS, root / "data", progress=False)
    assets = load_or_build_assets(ASSETS, root / "cache", progress=False)
    build_base_transformer(SETTINGS.base, ASSETS).save_pretrained(root / "video-base")  # random weights
    base = save_base(SETTINGS, assets, root / "video-base", root / "base")
    overrides = stage_overrides(SETTINGS, 1, root / "base", train_root, root / "train", progress=False)
    overrides["optim"].update(learning_rate=3e-3, lr_warmup_steps=0, lr_scheduler="constant")
    overrides["run"].update(max_steps=400, checkpoint_every=400, ema_decay=None)
    overrides["objective"] = {"tasks": {"generate": 1.0}, "text_dropout": 0.0}
    with torch.random.fork_rng():
        train(load_config(None, 1, overrides))
    trained = LayerFlowPipeline.from_pretrained(root / "train" / "stage1" / "final" / "pipeline")
    return base, trained, train_root


def test_trained_model_reads_its_prompts(
    briefly_trained: tuple[LayerFlowPipeline, LayerFlowPipeline, Path],
) -> None:
    base, trained, train_root = briefly_trained
    samples = sorted(p for p in train_root.iterdir() if p.is_dir())
    data = encode_heldout(base, samples)
    timesteps = (400, 600, 800, 950)
    before = x0_errors(base, data, timesteps=timesteps)
    after = x0_errors(trained, data, timesteps=timesteps)
    correct, shuffled = (sum(after[name].values()) / len(timesteps) for name in ("correct", "shuffled"))
    assert correct < 0.9 * shuffled, after  # text conditioning is learned
    assert correct < sum(before["correct"].values()) / len(timesteps), (before, after)


def test_x0_error_matches_the_formula_by_hand(
    briefly_trained: tuple[LayerFlowPipeline, LayerFlowPipeline, Path],
) -> None:
    """One timestep recomputed with the scheduler's own add_noise / alphas_cumprod and a plain loop."""
    _, trained, train_root = briefly_trained
    samples = sorted(p for p in train_root.iterdir() if p.is_dir())[:2]
    data = encode_heldout(trained, samples)
    result = x0_errors(trained, data, timesteps=(600,), seed=5)
    noise = torch.randn(data.latents.shape, generator=torch.Generator().manual_seed(5))
    clips = len(data.clip_frames)
    task = trained.layer_layout.for_task("generate")
    assert not task.condition_clips  # generate: every clip is noised
    abar = trained.scheduler.alphas_cumprod[600]
    noisy = abar.sqrt() * data.latents + (1 - abar).sqrt() * noise
    text = prompt_tokens(data.prompt_embeds, task, trained.transformer.config.max_text_seq_length)
    steps = torch.full((2,), 600)
    with torch.no_grad():
        v = trained.transformer(noisy, text, steps, num_clips=clips, return_dict=False)[0]
    x0 = abar.sqrt() * noisy - (1 - abar).sqrt() * v
    assert result["correct"]["600"] == pytest.approx(float((x0 - data.latents).pow(2).mean()), rel=1e-5)
    assert sum(data.clip_frames) == data.latents.shape[1]


def test_shuffling_needs_two_samples() -> None:
    data = HeldOutLatents(torch.zeros(1, 8, 4, 2, 2), torch.zeros(1, 6, 4), (2, 2, 2, 2))
    with pytest.raises(ValueError, match="at least 2 held-out samples"):
        x0_errors(None, data)  # type: ignore[arg-type]
