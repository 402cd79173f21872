from __future__ import annotations

import pytest
import torch

from transparent_vae import LatentOffsetEncoder, TemporalLayout, TinyVAE, TransparentVAE, random_rgba_shapes
from transparent_vae.alpha import grey_composite
from transparent_vae.testing import tiny_decoder, tiny_encoder


def test_layout_groups_are_frame_zero_alone_then_groups_of_four():
    layout = TemporalLayout(2)
    assert layout.groups(1) == [(0, 1)]
    assert layout.groups(9) == [(0, 1), (1, 5), (5, 9)]
    assert layout.groups(16) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert layout.frame_to_latent(9).tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert TemporalLayout(0).frame_to_latent(3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("num_frames", [1, 9, 13, 16, 17])
def test_layout_matches_cogvideox_latent_and_decoded_frame_counts(tiny_cogvideox_vae, num_frames):
    layout = TemporalLayout(2)
    video = torch.rand(1, 3, num_frames, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latent = tiny_cogvideox_vae.encode(video).latent_dist.mean
        assert latent.shape[2] == layout.num_latent_frames(num_frames)
        decoded_frames = tiny_cogvideox_vae.decode(latent).sample.shape[2]
    # The decoder's frame count maps back onto the same number of latent frames.
    assert layout.num_latent_frames(decoded_frames) == latent.shape[2]


def test_zero_init_encode_equals_the_base_latent(tiny_tvae):
    rgba = random_rgba_shapes(2, 32, 24, generator=torch.Generator().manual_seed(1))
    mean, _ = tiny_tvae.base_vae.encode_posterior(grey_composite(rgba[:, :3], rgba[:, 3:]))
    torch.testing.assert_close(
        tiny_tvae.encode(rgba), mean * tiny_tvae.base_vae.scaling_factor, rtol=0, atol=0
    )


def test_zero_init_encode_equals_diffusers_autoencoder_kl_latent(tiny_autoencoder_kl):
    tvae = TransparentVAE(tiny_autoencoder_kl, tiny_encoder(), tiny_decoder(), offset_gain=300.0)
    rgba = random_rgba_shapes(2, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = tiny_autoencoder_kl.encode(grey_composite(rgba[:, :3], rgba[:, 3:])).latent_dist.mean
        torch.testing.assert_close(tvae.encode(rgba), expected * 0.13025)
        assert tvae.decode(tvae.encode(rgba)).shape == (2, 4, 32, 32)


def test_zero_init_encode_equals_cogvideox_latent_and_video_round_trip(tiny_cogvideox_vae):
    tvae = TransparentVAE(
        tiny_cogvideox_vae, tiny_encoder(16, temporal_downsamples=2), tiny_decoder(16, temporal_layers=True)
    )
    rgba = random_rgba_shapes(1, 16, 16, num_frames=9, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = tiny_cogvideox_vae.encode(grey_composite(rgba[:, :3], rgba[:, 3:])).latent_dist.mean
        latents = tvae.encode(rgba)
        torch.testing.assert_close(latents, expected * 1.15258426)
        assert latents.shape == (1, 16, 3, 2, 2)
        decoded = tvae.decode(latents)
    assert decoded.shape == (1, 4, 9, 16, 16) and decoded.min() >= 0 and decoded.max() <= 1


def test_video_encoder_matches_image_encoder_on_one_frame_and_group_means_at_init():
    torch.manual_seed(0)
    image = LatentOffsetEncoder(block_channels=(8, 8, 16, 16))
    torch.nn.init.normal_(image.conv_out.weight, std=0.1)  # a "trained" output layer
    video = LatentOffsetEncoder(block_channels=(8, 8, 16, 16), temporal_downsamples=2)
    video.load_state_dict(image.state_dict(), strict=False)  # temporal layers keep their zero init
    clip = torch.rand(2, 4, 9, 16, 24)
    per_frame = torch.stack([image(clip[:, :, t]) for t in range(9)], dim=2)
    out = video(clip)
    assert out.shape == (2, 4, 3, 2, 3)
    for k, (start, stop) in enumerate(TemporalLayout(2).groups(9)):
        torch.testing.assert_close(
            out[:, :, k], per_frame[:, :, start:stop].mean(dim=2), rtol=1e-4, atol=1e-5
        )
    torch.testing.assert_close(video(clip[:, :, :1])[:, :, 0], image(clip[:, :, 0]), rtol=1e-5, atol=1e-6)


def test_encoder_and_vae_reject_bad_inputs(tiny_tvae):
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_tvae.encode(torch.rand(1, 4, 30, 32))
    with pytest.raises(ValueError, match="expected RGBA"):
        tiny_tvae.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="pass a video"):
        LatentOffsetEncoder(temporal_downsamples=2)(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="latent_channels 4 != base VAE 16"):
        TransparentVAE(TinyVAE(latent_channels=16), tiny_encoder(), tiny_decoder(16))


def test_unsupported_base_vae_names_the_adapters():
    with pytest.raises(TypeError, match="AutoencoderKLAdapter: not a diffusers AutoencoderKL"):
        TransparentVAE(torch.nn.Linear(2, 2), tiny_encoder(), tiny_decoder())


def test_image_vae_encodes_video_frame_by_frame(tiny_tvae):
    clip = random_rgba_shapes(1, 16, 16, num_frames=3, generator=torch.Generator().manual_seed(4))
    latents = tiny_tvae.encode(clip)
    for t in range(3):
        torch.testing.assert_close(latents[:, :, t], tiny_tvae.encode(clip[:, :, t]))
