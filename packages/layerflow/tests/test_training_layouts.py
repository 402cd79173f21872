"""The trainer trains any layout the pipeline runs: two foregrounds (custom layer names from the config
table) and ``latent_offset`` with a transparent VAE; the exported pipelines load and run."""

from __future__ import annotations

from pathlib import Path

import torch

from layerflow import LayerFlowPipeline
from layerflow.data import collate_for_layout
from layerflow.layout import LayerLayout
from layerflow.training.datasets import build_source
from layerflow.training.testing import reset_accelerate_state, tiny_test_config
from layerflow.training.trainer import LayerFlowTrainer

TWO_FOREGROUNDS = {
    "alpha": "alpha_clip",
    "layers": [
        {"name": "near", "role": "foreground"},
        {"name": "far", "role": "foreground"},
        {"name": "bg", "role": "background"},
        {"name": "blend", "role": "composite"},
    ],
}


def run(root: Path, overrides: dict) -> tuple[LayerFlowTrainer, list[float]]:
    reset_accelerate_state()
    trainer = LayerFlowTrainer(tiny_test_config(root, 1, overrides))
    return trainer, trainer.train().losses


def test_two_foreground_training(tmp_path: Path) -> None:
    overrides = {
        "model": {"layout": TWO_FOREGROUNDS},
        "data": {"sources": [{"kind": "synthetic", "num_samples": 8, "foregrounds": 2}]},
        "optim": {"learning_rate": 1e-3},
        "objective": {"tasks": {"generate": 1.0}, "text_dropout": 0.0},
        "run": {"max_steps": 30, "checkpoint_every": 30},
    }
    trainer, losses = run(tmp_path, overrides)
    quarter = len(losses) // 4
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    assert last < 0.92 * first, (first, last)

    # The trainer's batches name the synthetic foregrounds by the layout, front to back: the composite
    # is exactly near over far over the background.
    layout = trainer.pipeline.layer_layout
    assert [(s.name, s.role) for s in layout.layers] == [
        (e["name"], e["role"]) for e in TWO_FOREGROUNDS["layers"]
    ]
    source = build_source(trainer.config, trainer.config.data.sources[0])
    batch = collate_for_layout([source[0], source[1]], layout)
    near, far, bg = batch.layers["near"], batch.layers["far"], batch.layers["bg"].rgb
    behind = far.alpha * far.rgb + (1 - far.alpha) * bg
    torch.testing.assert_close(batch.layers["blend"].rgb, near.alpha * near.rgb + (1 - near.alpha) * behind)
    assert float((near.alpha - far.alpha).abs().max()) > 0.5  # two different objects

    # The exported pipeline runs the layout: per-layer RGBA foregrounds, in depth order.
    pipeline = LayerFlowPipeline.from_pretrained(tmp_path / "stage1" / "final" / "pipeline")
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.layer_layout == layout
    frames = source[0].for_layout(layout).frames()
    out = pipeline(
        {"near": "a red circle", "far": "a green square", "bg": "blue stripes"},
        "decompose",
        conditions={"blend": frames["blend"]},
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert list(out.layers) == ["near", "far", "bg", "blend"]
    assert out.layers["near"].shape[2] == out.layers["far"].shape[2] == 4


def test_latent_offset_training(tmp_path: Path) -> None:
    offset = LayerLayout.official("latent_offset").to_dict()
    trainer, losses = run(tmp_path, {"model": {"layout": offset}, "run": {"max_steps": 4}})
    assert len(losses) == 4 and all(0.0 < loss < 10.0 for loss in losses)
    assert trainer.pipeline.transparent_vae is not None
    assert (
        trainer.objective.layout.clips == LayerLayout.official("latent_offset").clips
    )  # 3 clips, no alpha clip
    pipeline = LayerFlowPipeline.from_pretrained(tmp_path / "stage1" / "final" / "pipeline")
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.transparent_vae is not None and pipeline.layer_layout.alpha == "latent_offset"
    out = pipeline(
        {
            "foreground": "a red circle",
            "background": "blue stripes",
            "composite": "a red circle on blue stripes",
        },
        "generate",
        num_frames=8,
        height=32,
        width=32,
        num_inference_steps=2,
        guidance_scale=1.0,
    )
    assert out.layers["foreground"].shape == (1, 8, 4, 32, 32)


def test_joint_vae_pass_training_caches_in_that_mode(tmp_path: Path) -> None:
    """``vae_pass = "joint"`` in the layout table: the cache is encoded (and fingerprinted) in that mode."""
    import json

    joint = {**LayerLayout.official().to_dict(), "vae_pass": "joint"}
    trainer, losses = run(tmp_path, {"model": {"layout": joint}, "run": {"max_steps": 2}})
    assert len(losses) == 2 and all(0.0 < loss < 10.0 for loss in losses)
    assert trainer.codec.layout.vae_pass == "joint"
    (manifest,) = (tmp_path / "stage1" / "cache").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["layout"]["vae_pass"] == "joint"


def test_clip_size_the_vae_cannot_round_trip_is_a_config_error(tmp_path: Path) -> None:
    import pytest

    from layerflow.training.config import ConfigError

    reset_accelerate_state()
    trainer = LayerFlowTrainer(tiny_test_config(tmp_path, 1, {"data": {"num_frames": 6}}))
    with pytest.raises(ConfigError, match=r"data.num_frames=6 per clip"):
        trainer.train()
    assert not (tmp_path / "embedded-data").exists()  # nothing generated or encoded first
