"""The demo's tiny VAE/T5 cache: reused when the config is unchanged, rebuilt when it changes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from layerflow.demo.assets import (
    ASSETS_FILE,
    DemoAssetConfig,
    _clip_pool,
    build_vae,
    load_or_build_assets,
    reconstruction_error,
    train_vae,
)

TINY = DemoAssetConfig(
    height=16,
    width=16,
    num_frames=4,
    vae_channels=(8, 8),
    vae_steps=2,
    vae_batch_size=2,
    vae_train_samples=2,
    vae_eval_samples=1,
    text_width=16,
    text_layers=1,
)


def test_cache_is_reused_and_rebuilt_on_a_config_change(tmp_path: Path) -> None:
    first = load_or_build_assets(TINY, tmp_path, progress=False)
    assert not first.reused and (first.directory / ASSETS_FILE).is_file()
    again = load_or_build_assets(TINY, tmp_path, progress=False)
    assert again.reused and again.directory == first.directory
    for (name, a), (_, b) in zip(first.vae.state_dict().items(), again.vae.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert again.reconstruction == first.reconstruction
    assert again.tokenizer.model_max_length == TINY.prompt_tokens

    changed = load_or_build_assets(replace(TINY, vae_learning_rate=1e-3), tmp_path, progress=False)
    assert not changed.reused and changed.directory != first.directory
    assert changed.fingerprint != first.fingerprint
    assert json.loads((changed.directory / ASSETS_FILE).read_text())["config"]["vae_learning_rate"] == 1e-3


def test_a_stale_record_is_rebuilt(tmp_path: Path) -> None:
    built = load_or_build_assets(TINY, tmp_path, progress=False)
    record = json.loads((built.directory / ASSETS_FILE).read_text())
    (built.directory / ASSETS_FILE).write_text(json.dumps({**record, "fingerprint": "stale"}))
    assert not load_or_build_assets(TINY, tmp_path, progress=False).reused


def test_vae_training_lowers_the_reconstruction_error() -> None:
    config = replace(
        TINY, vae_steps=60, vae_learning_rate=2e-3, vae_train_samples=4, vae_eval_samples=2, vae_batch_size=4
    )
    held_out = _clip_pool(config, config.vae_eval_samples, stream=1)
    before = reconstruction_error(build_vae(config), held_out)  # same seed: the weights training starts from
    _, after, losses = train_vae(config, progress=False)
    assert len(losses) == config.vae_steps
    assert after["mean"] < 0.95 * before["mean"], (before, after)


def test_bad_geometry_is_named() -> None:
    with pytest.raises(ValueError, match="30x32 must be a multiple of 8"):
        DemoAssetConfig(height=30)
