"""The demo's tiny VAE/T5 cache: reused when the config is unchanged, rebuilt when it changes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from layerflow.demo.assets import (
    ASSETS_FILE,
    PRETRAINED_RECORD,
    PRETRAINED_VAE_DIR,
    DemoAssetConfig,
    VaeCeilingError,
    _clip_pool,
    build_vae,
    check_ceiling,
    load_or_build_assets,
    load_pretrained_vae,
    measure_ceiling,
    save_pretrained_vae,
    train_vae,
)
from layerflow.metrics import alpha_iou

TINY = DemoAssetConfig(
    height=16,
    width=16,
    num_frames=4,
    vae_channels=(8, 8),
    temporal_compression=2,
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
    assert again.ceiling == first.ceiling and again.losses == first.losses
    assert again.tokenizer.model_max_length == TINY.prompt_tokens
    assert first.vae_source == again.vae_source == "trained"  # not the shipped VAE's recipe

    changed = load_or_build_assets(replace(TINY, vae_learning_rate=1e-3), tmp_path, progress=False)
    assert not changed.reused and changed.directory != first.directory
    assert changed.fingerprint != first.fingerprint
    assert json.loads((changed.directory / ASSETS_FILE).read_text())["config"]["vae_learning_rate"] == 1e-3


def test_a_stale_record_is_rebuilt(tmp_path: Path) -> None:
    built = load_or_build_assets(TINY, tmp_path, progress=False)
    record = json.loads((built.directory / ASSETS_FILE).read_text())
    (built.directory / ASSETS_FILE).write_text(json.dumps({**record, "fingerprint": "stale"}))
    assert not load_or_build_assets(TINY, tmp_path, progress=False).reused


def _mean_mae(ceiling: dict[str, Any]) -> float:
    return sum(ceiling["mae"].values()) / len(ceiling["mae"])


def _to_alpha(clips: torch.Tensor) -> torch.Tensor:
    """[N, 3, T, H, W] in [-1, 1] -> [N, T, 1, H, W] in [0, 1]."""
    return ((clips + 1) / 2).mean(1, keepdim=True).transpose(1, 2)


def test_vae_training_lowers_the_reconstruction_error() -> None:
    config = replace(
        TINY, vae_steps=60, vae_learning_rate=2e-3, vae_train_samples=4, vae_eval_samples=2, vae_batch_size=4
    )
    held_out = _clip_pool(config, config.vae_eval_samples, stream=1)
    before = measure_ceiling(build_vae(config), held_out)  # same seed: the weights training starts from
    vae, after, losses = train_vae(config, progress=False)
    assert len(losses) == config.vae_steps
    assert _mean_mae(after) < 0.95 * _mean_mae(before), (before, after)
    # The scaling factor makes the training latents unit-variance (what the noise schedule assumes).
    train = torch.cat(list(_clip_pool(config, config.vae_train_samples, stream=0).values()))
    with torch.no_grad():
        latents = vae.encode(train).latent_dist.mode() * vae.config.scaling_factor
    assert float(latents.std()) == pytest.approx(1.0, rel=1e-3)


def test_the_ceiling_is_the_round_trip_and_an_untrained_vae_fails_it_loudly() -> None:
    held_out = _clip_pool(TINY, 2, stream=1)
    vae = build_vae(TINY)
    ceiling = measure_ceiling(vae, held_out)
    with torch.no_grad():  # oracle: the metric's own IoU on the decoded alpha clip, by hand
        decoded = vae.decode(vae.encode(held_out["alpha"]).latent_dist.mode()).sample.clamp(-1, 1)
    pairs = zip(_to_alpha(decoded), _to_alpha(held_out["alpha"]), strict=True)
    expected = [alpha_iou(p, g) for p, g in pairs]
    assert ceiling["alpha_iou"] == pytest.approx(sum(expected) / len(expected))
    assert ceiling["checks"]["composite_mae"]["measured"] == ceiling["mae"]["composite"]
    assert not ceiling["checks"]["alpha_iou"]["met"]
    with pytest.raises(VaeCeilingError, match=r"alpha_iou = 0\.\d+ \(goal >= 0\.95\).*composite_mae"):
        check_ceiling(ceiling)


def test_a_met_ceiling_passes() -> None:
    perfect = {"checks": {"alpha_iou": {"measured": 0.97, "target": ">= 0.95", "met": True}}}
    check_ceiling(perfect)


def test_bad_geometry_is_named() -> None:
    with pytest.raises(ValueError, match="30x32 must be a multiple of 8"):
        DemoAssetConfig(height=30)
    with pytest.raises(ValueError, match="temporal_compression=8: a VAE of 3 blocks compresses time"):
        DemoAssetConfig(temporal_compression=8)


def test_the_shipped_vae_matches_the_default_recipe() -> None:
    """The default demo loads the shipped VAE instead of training one (its recipe fingerprint matches)."""
    record = json.loads((PRETRAINED_VAE_DIR / PRETRAINED_RECORD).read_text())
    assert record["vae_fingerprint"] == DemoAssetConfig().vae_fingerprint()
    assert load_pretrained_vae(DemoAssetConfig()) is not None
    # Text-only fields do not decide the VAE; anything else does.
    assert load_pretrained_vae(replace(DemoAssetConfig(), text_width=16)) is not None
    assert load_pretrained_vae(replace(DemoAssetConfig(), vae_steps=7)) is None
    assert len(record["losses"]) == DemoAssetConfig().vae_steps


def test_the_shipped_vae_reproduces_its_recorded_ceiling_in_a_fresh_process() -> None:
    code = (
        "import json, layerflow.demo.assets as a\n"
        "from diffusers.models.autoencoders.autoencoder_kl_cogvideox import AutoencoderKLCogVideoX\n"
        "vae = AutoencoderKLCogVideoX.from_pretrained(a.PRETRAINED_VAE_DIR)\n"
        "c = a.measure_ceiling(vae, a.held_out_clips(a.DemoAssetConfig()))\n"
        "print(json.dumps({'alpha_iou': c['alpha_iou'], 'mae': c['mae']}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    recorded = json.loads((PRETRAINED_VAE_DIR / PRETRAINED_RECORD).read_text())["ceiling"]
    assert measured["alpha_iou"] == pytest.approx(recorded["alpha_iou"], abs=1e-4)
    for kind, value in recorded["mae"].items():
        assert measured["mae"][kind] == pytest.approx(value, abs=1e-4), kind


def test_saving_a_pretrained_vae_never_replaces_a_foreign_folder(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    vae = build_vae(TINY)
    with pytest.raises(FileExistsError, match="no recipe.json"):
        save_pretrained_vae(foreign, TINY, vae, {}, [])
    assert (foreign / "notes.txt").read_text() == "keep"
    shipped = tmp_path / "shipped"
    save_pretrained_vae(shipped, TINY, vae, {"alpha_iou": 1.0}, [0.5])
    loaded = load_pretrained_vae(TINY, shipped)
    assert loaded is not None and loaded[1] == [0.5]
    for (name, a), (_, b) in zip(vae.state_dict().items(), loaded[0].state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_pretrain_command_writes_a_vae_the_demo_finds(tmp_path: Path) -> None:
    """``python -m layerflow.demo.pretrain vae`` in a fresh process; its folder serves its own recipe only."""
    out = tmp_path / "vae"
    command = [
        sys.executable,
        "-m",
        "layerflow.demo.pretrain",
        "vae",
        "--steps",
        "2",
        "--output",
        str(out),
        "--no-progress",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert f"wrote {out}" in result.stdout
    recipe = replace(DemoAssetConfig(), vae_steps=2)
    loaded = load_pretrained_vae(recipe, out)
    assert loaded is not None and len(loaded[1]) == 2
    assert load_pretrained_vae(DemoAssetConfig(), out) is None
    bad = subprocess.run([*command[:4], "--steps", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--steps: must be >= 1, got 0" in bad.stderr
    missing = subprocess.run(command[:3], capture_output=True, text=True)
    assert missing.returncode == 2 and "{vae,base}" in missing.stderr
