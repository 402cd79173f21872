"""The demo's pretrained video base: shipped for its recipe only, reproducible, and what it gives LayerFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from layerflow.demo.assets import DemoAssetConfig, load_or_build_assets
from layerflow.demo.base import (
    BASE_RECORD,
    PRETRAINED_BASE_DIR,
    BaseRecipe,
    base_clips,
    build_base_transformer,
    decode_videos,
    encode_videos,
    find_base,
    latent_frames_per_clip,
    read_base_record,
    save_pretrained_base,
    train_base,
)


def test_the_shipped_base_is_the_default_recipes() -> None:
    record = read_base_record(PRETRAINED_BASE_DIR)
    assert record is not None
    assert record["base_fingerprint"] == BaseRecipe().fingerprint(DemoAssetConfig())
    assert find_base(BaseRecipe(), DemoAssetConfig(), Path("/nonexistent")) == PRETRAINED_BASE_DIR
    # Another VAE, T5 or recipe needs a base of its own.
    for other in (replace(DemoAssetConfig(), text_width=16), replace(DemoAssetConfig(), vae_steps=7)):
        assert find_base(BaseRecipe(), other, Path("/nonexistent")) is None
    assert find_base(replace(BaseRecipe(), steps=7), DemoAssetConfig(), Path("/nonexistent")) is None
    assert len(record["losses"]) == -(-BaseRecipe().steps // record["loss_window"])


def test_the_shipped_base_reproduces_its_recorded_quality_in_a_fresh_process(tmp_path: Path) -> None:
    code = (
        "import json\n"
        "from diffusers import CogVideoXTransformer3DModel\n"
        "from layerflow.demo.assets import DemoAssetConfig, load_or_build_assets\n"
        "from layerflow.demo.base import PRETRAINED_BASE_DIR, BaseRecipe, measure_base\n"
        "from layerflow.tiny import single_thread\n"
        "import sys\n"
        "with single_thread():\n"
        "    assets = load_or_build_assets(DemoAssetConfig(), sys.argv[1], progress=False)\n"
        "    model = CogVideoXTransformer3DModel.from_pretrained(PRETRAINED_BASE_DIR)\n"
        "    print(json.dumps(measure_base(BaseRecipe(), assets, DemoAssetConfig(), model)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "cache")], capture_output=True, text=True, check=True
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    recorded = read_base_record(PRETRAINED_BASE_DIR)
    assert recorded is not None
    assert measured == pytest.approx(recorded["quality"], abs=1e-6)


def test_base_videos_round_trip_one_demo_clip_at_a_time() -> None:
    """A base video is encoded as the demo's per-clip pass encodes its clips: clip by clip."""
    assets = replace(DemoAssetConfig(), height=16, width=16, vae_channels=(8, 8), latent_channels=4)
    recipe = replace(BaseRecipe(), clips_per_video=3)
    videos, captions = base_clips(recipe, assets, 2, stream=5)
    assert videos.shape == (6, 3, 12, 16, 16) and len(captions) == 6
    assert captions[0].endswith(captions[2]) and captions[0].startswith(captions[1])  # fg over bg
    from layerflow.demo.assets import build_vae

    vae = build_vae(assets).eval()
    latents = encode_videos(vae, videos, assets.num_frames)
    assert latents.shape[1] == 3 * latent_frames_per_clip(assets)
    with torch.no_grad():  # oracle: the stock encode of the second clip alone
        alone = vae.encode(videos[:, :, 4:8]).latent_dist.mode() * vae.config["scaling_factor"]
    per_clip = latent_frames_per_clip(assets)
    torch.testing.assert_close(latents[:, per_clip : 2 * per_clip], alone.permute(0, 2, 1, 3, 4))
    decoded = decode_videos(vae, latents, per_clip)
    assert decoded.shape == (6, 12, 3, 16, 16)


def test_a_resumed_base_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    """The second call resumes from the first call's mid-run checkpoint and ends where it ended."""
    assets_config = replace(
        DemoAssetConfig(),
        height=16,
        width=16,
        vae_channels=(8, 8),
        latent_channels=4,
        vae_steps=2,
        vae_train_samples=2,
        vae_eval_samples=1,
        text_width=16,
    )
    recipe = replace(
        BaseRecipe(),
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=8,
        time_embed_dim=8,
        train_samples=2,
        steps=6,
        warmup_steps=2,
        clips_per_video=2,
    )
    assets = load_or_build_assets(assets_config, tmp_path / "cache", progress=False)
    with torch.random.fork_rng():
        whole, losses = train_base(recipe, assets, assets_config, progress=False)
        train_base(
            recipe,
            assets,
            assets_config,
            progress=False,
            checkpoint_dir=tmp_path / "ckpt",
            checkpoint_every=3,
        )
        resumed, resumed_losses = train_base(
            recipe,
            assets,
            assets_config,
            progress=False,
            checkpoint_dir=tmp_path / "ckpt",
            checkpoint_every=3,
        )
    assert resumed_losses == losses
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_saving_a_base_never_replaces_a_foreign_folder(tmp_path: Path) -> None:
    assets = replace(DemoAssetConfig(), height=16, width=16, vae_channels=(8, 8), latent_channels=4)
    recipe = replace(
        BaseRecipe(), num_layers=1, num_attention_heads=2, attention_head_dim=8, time_embed_dim=8
    )
    model = build_base_transformer(recipe, assets)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="no recipe.json"):
        save_pretrained_base(foreign, recipe, assets, model, {}, [])
    assert (foreign / "notes.txt").read_text() == "keep"
    (foreign / "recipe.json").write_text('{"name": "my cake recipe"}')  # a look-alike: the name, not ours
    with pytest.raises(FileExistsError, match="its recipe.json is not layerflow's"):
        save_pretrained_base(foreign, recipe, assets, model, {}, [])
    assert (foreign / "notes.txt").read_text() == "keep"
    save_pretrained_base(tmp_path / "ours", recipe, assets, model, {"x": 1.0}, [0.5] * 150)
    record = read_base_record(tmp_path / "ours")
    assert (
        record is not None and record["losses"] == [0.5, 0.5] and (tmp_path / "ours" / BASE_RECORD).is_file()
    )
    save_pretrained_base(tmp_path / "ours", recipe, assets, model, {"x": 2.0}, [])  # ours: replaced
    assert read_base_record(tmp_path / "ours")["quality"] == {"x": 2.0}  # type: ignore[index]


def test_pretrain_base_writes_a_base_the_demo_finds_for_its_own_recipe(tmp_path: Path) -> None:
    """``python -m layerflow.demo.pretrain base`` in a fresh process, then the demo's lookup."""
    out = tmp_path / "cache" / "base-x"
    command = [sys.executable, "-m", "layerflow.demo.pretrain", "base"]
    options = ["--steps", "2", "--train-samples", "2", "--output", str(out), "--no-progress"]
    options += ["--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run([*command, *options], capture_output=True, text=True, check=True)
    assert f"wrote {out}" in result.stdout
    recipe = replace(BaseRecipe(), steps=2, schedule_steps=None, train_samples=2, warmup_steps=2)
    record = read_base_record(out)
    assert record is not None and record["base_fingerprint"] == recipe.fingerprint(DemoAssetConfig())
    assert set(record["quality"]) >= {"foreground_colour", "foreground_shape", "temporal_consistency"}
    renamed = tmp_path / "cache" / f"base-{recipe.fingerprint(DemoAssetConfig())}"
    out.rename(renamed)
    assert find_base(recipe, DemoAssetConfig(), tmp_path / "cache") == renamed
    assert find_base(replace(recipe, steps=3), DemoAssetConfig(), tmp_path / "cache") is None
    bad = subprocess.run([*command, "--steps", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--steps: must be >= 1, got 0" in bad.stderr
