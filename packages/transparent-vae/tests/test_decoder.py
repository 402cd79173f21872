from __future__ import annotations

import pytest
import torch

from transparent_vae.testing import tiny_decoder
from transparent_vae.tta import DIHEDRAL_TRANSFORMS, apply_transform, dihedral_median


def _randomise(decoder: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised latent path weights, as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in decoder.latent_in.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return decoder


@pytest.mark.parametrize(("height", "width"), [(37, 45), (16, 24), (9, 70)])
def test_output_range_and_shape_for_sizes_that_are_not_multiples_of_the_unet_depth(height, width):
    torch.manual_seed(0)
    decoder = _randomise(tiny_decoder()).eval()
    pixels = torch.rand(2, 3, height, width)
    latent = torch.randn(2, 4, -(-height // 8), -(-width // 8))
    with torch.no_grad():
        out = decoder(pixels, latent)
        raw = decoder.predict_raw(pixels, latent)
    assert out.shape == (2, 4, height, width)
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, raw.clamp(0, 1))


def test_odd_sizes_are_edge_padded_to_the_unet_multiple_and_cropped_back():
    # Oracle: pad by hand (replicate) to the next multiple of 8 with the matching latent, decode, crop.
    torch.manual_seed(0)
    decoder = _randomise(tiny_decoder()).eval()
    pixels, latent = torch.rand(1, 3, 13, 21), torch.randn(1, 4, 2, 3)
    padded_pixels = torch.nn.functional.pad(pixels, (0, 3, 0, 3), mode="replicate")
    with torch.no_grad():
        expected = decoder(padded_pixels, latent)[..., :13, :21]
        torch.testing.assert_close(decoder(pixels, latent), expected)


def test_latent_grid_mismatch_is_reported():
    with pytest.raises(ValueError, match="need a latent grid of 5x6"):
        tiny_decoder()(torch.rand(1, 3, 37, 45), torch.randn(1, 4, 4, 6))


def test_tta_with_an_identity_network_returns_the_input_exactly():
    pixels, latent = torch.rand(2, 4, 8, 12), torch.rand(2, 4, 1, 2)
    out = dihedral_median(lambda p, z: p, pixels, latent)
    assert torch.equal(out, pixels)


def test_tta_output_of_a_symmetric_input_is_symmetric_and_single_pass_is_not():
    torch.manual_seed(0)
    decoder = _randomise(tiny_decoder()).eval()
    # Symmetric under all 8 flips/rotations: a radial image and a constant latent.
    grid = torch.linspace(-1, 1, 32)
    radius = (grid[:, None] ** 2 + grid[None, :] ** 2).sqrt()
    pixels = torch.stack([radius, 1 - radius / 2, radius**2 / 2]).unsqueeze(0).clamp(0, 1)
    latent = torch.ones(1, 4, 4, 4) * torch.tensor([0.3, -0.2, 0.5, 0.1]).view(1, 4, 1, 1)
    for flip, k in DIHEDRAL_TRANSFORMS:
        assert torch.equal(apply_transform(pixels, flip, k), pixels)
    with torch.no_grad():
        single = decoder(pixels, latent)
        augmented = decoder(pixels, latent, tta=True)

    def asymmetry(x: torch.Tensor) -> float:
        return max(float((apply_transform(x, f, k) - x).abs().max()) for f, k in DIHEDRAL_TRANSFORMS)

    assert asymmetry(augmented) < 1e-6
    assert asymmetry(single) > 1e-4


def test_video_mode_gives_each_frame_its_latent_slice():
    torch.manual_seed(0)
    decoder = _randomise(tiny_decoder()).eval()
    pixels, latent = torch.rand(1, 3, 5, 16, 16), torch.randn(1, 4, 2, 2, 2)
    frame_index = torch.tensor([0, 1, 1, 1, 1])
    with torch.no_grad():
        video = decoder(pixels, latent, frame_index=frame_index)
        for t, k in enumerate(frame_index.tolist()):
            torch.testing.assert_close(video[:, :, t], decoder(pixels[:, :, t], latent[:, :, k]))
        tta_video = decoder(pixels, latent, frame_index=frame_index, tta=True)
        torch.testing.assert_close(tta_video[:, :, 2], decoder(pixels[:, :, 2], latent[:, :, 1], tta=True))
    with pytest.raises(ValueError, match="pass frame_index"):
        decoder(pixels, latent)


def test_temporal_layers_start_as_identity_and_mix_frames_once_trained():
    torch.manual_seed(0)
    plain = _randomise(tiny_decoder()).eval()
    temporal = tiny_decoder(temporal_layers=True).eval()
    temporal.load_state_dict(plain.state_dict(), strict=False)
    pixels, latent = torch.rand(1, 3, 4, 16, 16), torch.randn(1, 4, 4, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(temporal(pixels, latent), plain(pixels, latent))
        for parameter in temporal.temporal_mid.conv.parameters():
            parameter.normal_(std=0.5)
        changed = pixels.clone()
        changed[:, :, 0] = torch.rand(3, 16, 16)
        # With trained temporal layers, frame 1's output depends on frame 0's pixels.
        assert (temporal(changed, latent)[:, :, 1] - temporal(pixels, latent)[:, :, 1]).abs().max() > 1e-4
        assert torch.equal(plain(changed, latent)[:, :, 1], plain(pixels, latent)[:, :, 1])
