from __future__ import annotations

import pytest
import torch

from transparent_vae import (
    checkerboard,
    composite_over,
    grey_composite,
    pad_rgb,
    premultiply,
    random_rgba_shapes,
    unpremultiply,
)


def _shapes(seed: int = 0, frames: int | None = None) -> torch.Tensor:
    return random_rgba_shapes(2, 40, 48, num_frames=frames, generator=torch.Generator().manual_seed(seed))


def test_pad_rgb_keeps_opaque_pixels_and_fills_transparent_ones_smoothly():
    rgba = _shapes()
    rgb, alpha = rgba[:, :3], rgba[:, 3:]
    alpha = torch.where(alpha > 0.5, torch.ones_like(alpha), torch.zeros_like(alpha))  # hard cut-outs
    padded = pad_rgb(rgb, alpha)
    opaque = alpha.expand_as(rgb) == 1
    assert torch.equal(padded[opaque], rgb[opaque])
    assert torch.isfinite(padded).all() and padded.min() >= 0 and padded.max() <= 1
    # Under alpha = 0 the raw colour is noise; the padded colour must be far smoother there.
    hidden = (alpha == 0)[:, :, 1:, :].expand(-1, 3, -1, -1) & (alpha == 0)[:, :, :-1, :].expand(
        -1, 3, -1, -1
    )
    raw_jumps = (rgb[:, :, 1:] - rgb[:, :, :-1]).abs()[hidden].mean()
    padded_jumps = (padded[:, :, 1:] - padded[:, :, :-1]).abs()[hidden].mean()
    assert padded_jumps < raw_jumps / 10


def test_pad_rgb_of_a_constant_colour_is_that_colour_everywhere():
    # Hand-derived: area pooling is linear, so every level holds c*a over a, and c*a + c*(1-a) = c.
    alpha = torch.rand(1, 1, 17, 23)
    alpha[..., :5, :] = 0
    colour = torch.tensor([0.2, 0.6, 0.9]).view(1, 3, 1, 1)
    padded = pad_rgb(colour.expand(1, 3, 17, 23).clone(), alpha)
    torch.testing.assert_close(padded, colour.expand_as(padded), rtol=0, atol=1e-5)


def test_pad_rgb_semi_transparent_pixels_mix_with_the_fill_and_empty_images_are_black():
    rgb = torch.rand(1, 3, 8, 8)
    assert torch.equal(pad_rgb(rgb, torch.zeros(1, 1, 8, 8)), torch.zeros_like(rgb))
    padded = pad_rgb(rgb, torch.full((1, 1, 8, 8), 0.5))
    mean = rgb.mean(
        dim=(2, 3), keepdim=True
    )  # fill of a uniform-alpha image: its mean colour at coarse levels
    assert ((padded - (0.5 * rgb + 0.5 * mean)).abs() < 0.25).all()


def test_pad_rgb_video_agrees_with_images_frame_by_frame():
    video = _shapes(frames=3)
    padded = pad_rgb(video[:, :3], video[:, 3:])
    for t in range(3):
        torch.testing.assert_close(padded[:, :, t], pad_rgb(video[:, :3, t], video[:, 3:, t]), rtol=0, atol=0)


def test_pad_rgb_rejects_mismatched_alpha():
    with pytest.raises(ValueError, match="alpha must be"):
        pad_rgb(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 9))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_pad_rgb_ignores_non_finite_colour_under_alpha_zero(bad):
    rgba = _shapes(seed=2)
    rgb, alpha = rgba[:, :3].clone(), rgba[:, 3:].clone()
    alpha[0, 0, 3, 4] = 0
    expected = pad_rgb(rgb, alpha)  # oracle: the colour under alpha 0 is never read
    rgb[0, 1, 3, 4] = bad
    torch.testing.assert_close(pad_rgb(rgb, alpha), expected, rtol=0, atol=0)


def test_pad_rgb_refuses_non_finite_visible_colour_or_alpha():
    rgb, alpha = torch.rand(1, 3, 8, 8), torch.full((1, 1, 8, 8), 0.5)
    rgb[0, 2, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"rgb has 1 NaN/inf value\(s\) where alpha > 0"):
        pad_rgb(rgb, alpha)
    alpha[0, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"alpha has 1 NaN/inf value\(s\)"):
        pad_rgb(torch.rand(1, 3, 8, 8), alpha)


def test_premultiply_compositing_and_grey_composite():
    rgb, alpha = torch.rand(2, 3, 5, 6), torch.rand(2, 1, 5, 6) * 0.9 + 0.1
    torch.testing.assert_close(unpremultiply(premultiply(rgb, alpha), alpha), rgb)
    assert torch.equal(unpremultiply(rgb, torch.zeros_like(alpha)), torch.zeros_like(rgb))
    over_colour = composite_over(rgb, alpha, (0.5, 0.5, 0.5))
    over_tensor = composite_over(rgb, alpha, torch.full_like(rgb, 0.5))
    torch.testing.assert_close(over_colour, over_tensor)
    # Grey composite = composite over 50 % grey, mapped to [-1, 1].
    torch.testing.assert_close(grey_composite(rgb, alpha), over_colour * 2 - 1)
    board = checkerboard(4, 6, cell=2)
    assert board.shape == (1, 3, 4, 6)
    torch.testing.assert_close(board.unique(), torch.tensor([0.45, 0.55]))
