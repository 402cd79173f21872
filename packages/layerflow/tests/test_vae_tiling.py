"""VAE tiling on every layout, and the bounded-memory joint VAE pass against the untiled one.

The joint pass with tiling on runs every spatial tile over the whole video (see
:mod:`layerflow.codec`); measured on the demo's trained VAE (16/32/32 channels, 4x spatial, 2x
temporal compression) with smooth frames, 4 clips x 8 frames at 64x64, 32-pixel tiles: latents
0.136 relative change, decoded frames 0.022 mean absolute change, peak tensor memory 168 -> 44 MiB.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_cogvideox import AutoencoderKLCogVideoX

from layerflow.codec import ClipCodec
from layerflow.demo.assets import PRETRAINED_VAE_DIR
from layerflow.layout import LayerLayout
from layerflow.models.configs import model_geometry
from layerflow.testing import PeakTensorBytes, build_tiny_pipeline, random_layer_frames, single_thread

SIZE, FRAMES = 64, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _smooth_frames(layout: LayerLayout) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    frames = {}
    for spec in layout.layers:
        coarse = torch.rand(FRAMES, 4 if spec.transparent else 3, SIZE // 8, SIZE // 8, generator=generator)
        frames[spec.name] = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear")[None]
    return frames


@torch.no_grad()
def _round_trip(codec: ClipCodec, pixels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, float]:
    """Posterior mean, decoded layers and peak MiB of the tensors the pass creates."""
    frames = codec.geometry.check(FRAMES, SIZE, SIZE, codec.layout)
    tensors = [*codec.vae.parameters(), *codec.vae.buffers(), *pixels.values()]
    with PeakTensorBytes({t.untyped_storage().data_ptr() for t in tensors}) as tracker:
        mean = codec.encode(pixels, frames).mean
        decoded = codec.decode(mean * codec.geometry.scaling_factor, frames)
    return mean, decoded, tracker.peak / 2**20


@pytest.mark.slow
def test_tiled_joint_pass_stays_close_to_the_untiled_one_in_less_memory():
    vae = AutoencoderKLCogVideoX.from_pretrained(PRETRAINED_VAE_DIR).eval()
    official = LayerLayout.official()
    layout = LayerLayout(official.layers, official.alpha, vae_pass="joint")
    spatial = 2 ** (len(vae.config.block_out_channels) - 1)
    geometry = model_geometry(vae.config, {"sample_height": SIZE // spatial, "sample_width": SIZE // spatial})
    codec = ClipCodec(layout, geometry, vae)
    pixels = _smooth_frames(layout)
    mean, decoded, peak = _round_trip(codec, pixels)
    # a 32-pixel tile every 24 pixels: a stride that is a whole number of latents
    vae.enable_tiling(32, 32, 0.25, 0.25)
    tiled_mean, tiled_decoded, tiled_peak = _round_trip(codec, pixels)
    assert tiled_mean.shape == mean.shape
    assert ((tiled_mean - mean).norm() / mean.norm()).item() < 0.2
    for name, frames in decoded.items():
        assert tiled_decoded[name].shape == frames.shape
        assert (tiled_decoded[name] - frames).abs().mean().item() < 0.04
    assert tiled_peak < peak / 2


@pytest.mark.parametrize(
    ("alpha", "vae_pass"), [("rgb", "per_clip"), ("latent_offset", "per_clip"), ("alpha_clip", "joint")]
)
def test_vae_tiling_runs_every_layout(alpha, vae_pass):
    official = LayerLayout.official(alpha)
    pipe = build_tiny_pipeline(LayerLayout(official.layers, official.alpha, vae_pass=vae_pass))
    pipe.set_progress_bar_config(disable=True)
    composite = random_layer_frames(pipe.layer_layout)["composite"]

    def run() -> dict[str, torch.Tensor]:
        return pipe(
            {"foreground": "a red circle", "background": "blue stripes"},
            "decompose",
            conditions={"composite": composite},
            num_inference_steps=1,
            generator=torch.Generator().manual_seed(0),
        ).layers

    plain = run()
    pipe.enable_vae_tiling()
    tiled = run()
    for name, frames in plain.items():  # 16x16 frames fit one tile: the same pass
        assert torch.equal(tiled[name], frames)
