"""What the trainer encodes for a sample is exactly what the pipeline encodes for the same frames as
conditions: every per-clip layout the pipeline runs (one and two foregrounds, rgb, latent_offset)."""

from __future__ import annotations

import pytest
import torch

from layerflow.data import LayeredSample, collate_for_layout
from layerflow.layout import LayerLayout
from layerflow.testing import random_layered_sample
from layerflow.tiny import build_tiny_training_pipeline
from layerflow.training.encoding import BatchEncoder, prompt_encoder
from layerflow.training.objective import STREAM_POSTERIOR, sample_generator

FRAMES = 8
LAYOUTS = {
    "alpha_clip": LayerLayout.official(),
    "rgb": LayerLayout.official("rgb"),
    "two_foregrounds": LayerLayout.with_foregrounds(2),
    "latent_offset": LayerLayout.official("latent_offset"),
}
CONDITIONAL_TASKS = ("foreground_to_background", "background_to_foreground", "decompose")


def sample_of(layout: LayerLayout) -> LayeredSample:
    return random_layered_sample(layout, num_frames=FRAMES)


def trainer_latents(pipeline, sample: LayeredSample) -> torch.Tensor:
    """What the trainer's on-the-fly encoder feeds the model for ``sample`` (step 0, sample position 0)."""
    codec = pipeline.codec
    encoder = BatchEncoder(
        codec,
        text_encoder=prompt_encoder(pipeline, pipeline.transformer.config.max_text_seq_length),
        seed=11,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    latents, _ = encoder.encode_latents(collate_for_layout([sample], codec.layout), 0, 0, [0])
    return latents


def pipeline_condition_latents(pipeline, sample: LayeredSample, task: str, generator: torch.Generator):
    """The condition latents the pipeline encodes for the same frames, and their latent frame indices."""
    task_layout = pipeline.layer_layout.for_task(task)
    frames = sample.frames()
    output = pipeline(
        {layer.name: "a red circle" for layer in task_layout.prompt_layers},
        task,
        conditions={layer.name: frames[layer.name] for layer in task_layout.condition_layers},
        num_inference_steps=1,
        guidance_scale=1.0,
        generator=generator,
        output_type="latent",
    )
    clip_frames = [output.latents.shape[1] // len(task_layout.clips)] * len(task_layout.clips)
    return output.latents, list(task_layout.condition_latent_frames(clip_frames))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_trainer_encodes_conditions_as_the_pipeline(name: str, deterministic_vae) -> None:
    layout = LAYOUTS[name]
    pipeline = build_tiny_training_pipeline(layout=layout)
    pipeline.set_progress_bar_config(disable=True)
    sample = sample_of(layout)
    trained = trainer_latents(pipeline, sample)
    for task in CONDITIONAL_TASKS:
        latents, condition = pipeline_condition_latents(
            pipeline, sample, task, torch.Generator().manual_seed(0)
        )
        assert condition, task
        assert torch.equal(trained[:, condition], latents[:, condition]), (name, task)


def test_posterior_draws_agree_with_the_pipeline_generator() -> None:
    """With the real (stochastic) posterior: the trainer's draw from its sample generator equals the
    pipeline's condition latents drawn from a generator in the same state (foreground clips first)."""
    layout = LAYOUTS["two_foregrounds"]
    pipeline = build_tiny_training_pipeline(layout=layout)
    pipeline.set_progress_bar_config(disable=True)
    sample = sample_of(layout)
    trained = trainer_latents(pipeline, sample)
    generator = sample_generator(11, 0, 0, 0, STREAM_POSTERIOR)
    latents, condition = pipeline_condition_latents(pipeline, sample, "foreground_to_background", generator)
    assert condition == list(range(8))  # fg0 | alpha0 | fg1 | alpha1, 2 latent frames each
    assert torch.equal(trained[:, condition], latents[:, condition])
    other, _ = pipeline_condition_latents(
        pipeline, sample, "foreground_to_background", torch.Generator().manual_seed(1)
    )
    assert not torch.equal(trained[:, condition], other[:, condition])  # the draw is really stochastic
