"""The trained first-frame task: what the trainer feeds the model for an ``animate`` sample is, at
the first-frame slots, exactly the pipeline's condition latents for the same first frames (the
posterior drawn from a generator in the same state); the slots are clean and get no loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from layerflow import LayerFlowPipeline
from layerflow.conditions import first_frame_only
from layerflow.data import collate_for_layout
from layerflow.layout import LayerLayout
from layerflow.stage_output import StageOutput
from layerflow.testing import random_layered_sample, single_thread
from layerflow.tiny import build_tiny_training_pipeline
from layerflow.training.config import ConfigError, TrainConfig
from layerflow.training.encoding import BatchEncoder, prompt_encoder
from layerflow.training.objective import STREAM_FIRST_FRAME_POSTERIOR, Objective, sample_generator
from layerflow.training.testing import train_tiny

FRAMES, SEED = 8, 11
LAYOUTS = {
    "alpha_clip": LayerLayout.official(),
    "rgb": LayerLayout.official("rgb"),
    "two_foregrounds": LayerLayout.with_foregrounds(2),
    "latent_offset": LayerLayout.official("latent_offset"),
    "joint": dataclasses.replace(LayerLayout.official(), vae_pass="joint"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def trainer_side(pipeline, sample, first_frame_noise: bool, position: int = 0):
    layout = pipeline.layer_layout
    objective = Objective(
        pipeline.scheduler,
        layout,
        {"animate": 1.0},
        task_mixing="per_batch",
        text_dropout=0.0,
        tokens_per_prompt=pipeline.transformer.config.max_text_seq_length,
        seed=SEED,
        first_frame_noise=first_frame_noise,
    )
    encoder = BatchEncoder(
        pipeline.codec,
        text_encoder=prompt_encoder(pipeline, pipeline.transformer.config.max_text_seq_length),
        seed=SEED,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    batch = collate_for_layout([sample], layout)
    draws = objective.draw(0, 0, [position])
    model_batch = encoder(batch, 0, 0, [position], draws)
    return objective, draws, model_batch


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_trainer_first_frames_are_the_pipelines_bit_for_bit(name: str) -> None:
    pipeline = build_tiny_training_pipeline(layout=LAYOUTS[name])
    pipeline.set_progress_bar_config(disable=True)
    sample = random_layered_sample(pipeline.layer_layout, num_frames=FRAMES)
    objective, draws, model_batch = trainer_side(pipeline, sample, first_frame_noise=False)
    task_layout = draws.task_layouts[0]
    assert task_layout.task == "animate" and task_layout.first_frames
    slots = list(task_layout.first_frame_latent_frames(model_batch.clip_frames))
    frames = sample.frames()
    output = pipeline(
        {spec.name: "a red circle" for spec in pipeline.layer_layout.layers},
        "animate",
        conditions={layer: first_frame_only(frames[layer][0]) for layer in task_layout.first_frames},
        num_frames=FRAMES,
        num_inference_steps=1,
        guidance_scale=1.0,
        generator=sample_generator(SEED, 0, 0, 0, STREAM_FIRST_FRAME_POSTERIOR),
        output_type="latent",
    )
    assert torch.equal(model_batch.latents[:, slots], output.latents[:, slots])
    noised = objective.noise(model_batch, 0, 0, [0], draws)
    assert torch.equal(noised.model_input[:, slots], model_batch.latents[:, slots])  # clean
    assert not noised.loss_mask[:, slots].any()  # no loss on a condition
    assert noised.loss_mask.sum() == model_batch.latents.shape[1] - len(slots)


def test_condition_noise_augmentation() -> None:
    """CogVideoX I2V's log-normal pixel noise (median std 0.05 in model range) moves the first-frame
    latents a little, differently per sample; whole-clip latents stay as without it."""
    pipeline = build_tiny_training_pipeline()
    sample = random_layered_sample(pipeline.layer_layout, num_frames=FRAMES)
    _, draws, clean = trainer_side(pipeline, sample, first_frame_noise=False)
    _, noisy_draws, noisy = trainer_side(pipeline, sample, first_frame_noise=True)
    slots = list(draws.task_layouts[0].first_frame_latent_frames(clean.clip_frames))
    sigma = noisy_draws.first_frame_sigmas[0]
    assert sigma is not None and 0.005 < sigma < 0.5
    difference = (noisy.latents[:, slots] - clean.latents[:, slots]).abs().mean()
    assert 0 < difference < clean.latents[:, slots].abs().mean()
    others = [i for i in range(clean.latents.shape[1]) if i not in slots]
    assert torch.equal(noisy.latents[:, others], clean.latents[:, others])
    sigmas = {
        trainer_side(pipeline, sample, True, position)[1].first_frame_sigmas[0] for position in range(4)
    }
    assert len(sigmas) == 4


def test_first_frame_tasks_train_without_the_cache() -> None:
    config = TrainConfig()
    config.objective.tasks = {"generate": 0.8, "animate": 0.2}
    config.data.precompute = True
    with pytest.raises(ConfigError, match="set data.precompute = false"):
        config.validate()
    config.data.precompute = False
    config.validate()


def test_stage_training_samples_animate_and_the_model_runs_it_trained(tmp_path) -> None:
    """Two steps mixing ``animate`` per sample with ``generate``: the saved model's layout lists
    ``animate``, so its pipeline splices first frames clean (trained mode) by default."""
    overrides = {
        "run": {"max_steps": 2, "checkpoint_every": 2},
        "data": {"precompute": False},
        "objective": {"tasks": {"generate": 0.5, "animate": 0.5}, "task_mixing": "per_sample"},
    }
    result = train_tiny(tmp_path, "animate", overrides)
    assert len(result.losses) == 2 and all(0 < loss < 10 for loss in result.losses)
    pipeline = LayerFlowPipeline.from_pretrained(StageOutput(tmp_path / "animate").pipeline)
    assert "animate" in pipeline.layer_layout.tasks
    pipeline.set_progress_bar_config(disable=True)
    image = random_layered_sample(pipeline.layer_layout, num_frames=FRAMES).frames()["foreground"][0]
    output = pipeline(
        {spec.name: "a red circle" for spec in pipeline.layer_layout.layers},
        "animate",
        conditions={"foreground": first_frame_only(image)},
        num_frames=FRAMES,
        num_inference_steps=1,
        output_type="latent",
    )
    assert output.settings["first_frame_mode"] == "trained"
