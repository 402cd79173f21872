"""Straight-alpha helpers: LayerDiffuse's colour padding, premultiplication and compositing.

Every function works on images ``[B, C, H, W]`` and videos ``[B, C, T, H, W]`` (colour and alpha in
``[0, 1]``, alpha with one channel); videos are processed frame by frame through the same batched
code, so an image and the frames of a video give identical results.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._frames import fold_frames, unfold_frames

#: Downscale factor between pyramid levels in LayerDiffuse's ``pad_rgb``.
PYRAMID_STEP = 1.2


def check_rgb_alpha(rgb: torch.Tensor, alpha: torch.Tensor) -> None:
    """Raise a clear error unless ``rgb`` (3 channels) and ``alpha`` (1 channel) describe the same pixels."""
    if rgb.ndim not in (4, 5) or rgb.shape[1] != 3:
        raise ValueError(f"rgb must be [B, 3, H, W] or [B, 3, T, H, W], got shape {tuple(rgb.shape)}")
    if alpha.ndim != rgb.ndim or alpha.shape[1] != 1 or alpha.shape[2:] != rgb.shape[2:]:
        raise ValueError(
            f"alpha must be [B, 1, ...] with the same size as rgb {tuple(rgb.shape)}, got {tuple(alpha.shape)}"
        )


def split_rgba(rgba: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, 4, ...]`` straight RGBA -> (rgb ``[B, 3, ...]``, alpha ``[B, 1, ...]``)."""
    if rgba.ndim not in (4, 5) or rgba.shape[1] != 4:
        raise ValueError(f"expected RGBA [B, 4, H, W] or [B, 4, T, H, W], got shape {tuple(rgba.shape)}")
    return rgba[:, :3], rgba[:, 3:]


def _pyramid_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Level sizes from full resolution down to a side of 1 px, each ~1/1.2 of the previous."""
    sizes = [(height, width)]
    while min(sizes[-1]) > 1:
        h, w = sizes[-1]
        sizes.append((max(1, int(h / PYRAMID_STEP)), max(1, int(w / PYRAMID_STEP))))
    return sizes


def pad_rgb(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """LayerDiffuse's colour fill for transparent regions (pull-push over an alpha-weighted pyramid).

    Premultiplied colour and alpha are area-downscaled by ~1.2x per level down to 1 px; the estimate
    starts as the alpha-weighted mean colour and is bilinearly upsampled coarse -> fine, compositing
    each level's premultiplied colour over it (``c*a + fill*(1 - a)``). Opaque pixels keep their colour
    exactly, fully transparent ones get a smooth colour bled from nearby visible content, and a fully
    transparent image becomes black. The offset encoder sees padded colour instead of raw straight
    colour because raw colour under ``alpha = 0`` is arbitrary and would leak noise into the latent.

    Args:
        rgb: straight colour in ``[0, 1]``, ``[B, 3, H, W]`` or ``[B, 3, T, H, W]``.
        alpha: ``[B, 1, ...]`` in ``[0, 1]``.

    Returns:
        padded colour with the shape of ``rgb``.

    Colour under ``alpha = 0`` is never read, so NaN/inf there is ignored (it would otherwise spread
    through the pyramid into every pixel); NaN/inf colour where ``alpha > 0``, or in alpha, is an error.
    """
    check_rgb_alpha(rgb, alpha)
    if not torch.isfinite(alpha).all():
        raise ValueError(f"alpha has {int((~torch.isfinite(alpha)).sum())} NaN/inf value(s)")
    visible = (alpha > 0).expand_as(rgb)
    bad = int((~torch.isfinite(rgb) & visible).sum())
    if bad:
        raise ValueError(f"rgb has {bad} NaN/inf value(s) where alpha > 0")
    rgb_read = torch.where(visible, rgb, torch.zeros((), dtype=rgb.dtype, device=rgb.device))
    video = rgb.ndim == 5
    colour = fold_frames(rgb_read.float()) if video else rgb_read.float()
    coverage = fold_frames(alpha.float()) if video else alpha.float()
    premultiplied = colour * coverage
    levels = [(premultiplied, coverage)]
    for size in _pyramid_sizes(*colour.shape[-2:])[1:]:
        levels.append(
            (
                F.interpolate(premultiplied, size=size, mode="area"),
                F.interpolate(coverage, size=size, mode="area"),
            )
        )
    coarse_colour, coarse_alpha = levels[-1]
    fill = coarse_colour.sum(dim=(-2, -1), keepdim=True) / coarse_alpha.sum(
        dim=(-2, -1), keepdim=True
    ).clamp_min(1e-8)
    for level_colour, level_alpha in reversed(levels):
        fill = F.interpolate(fill, size=level_colour.shape[-2:], mode="bilinear", align_corners=False)
        fill = level_colour + fill * (1 - level_alpha)
    return (unfold_frames(fill, rgb.shape[0]) if video else fill).to(rgb.dtype)


def premultiply(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Straight colour -> premultiplied colour ``rgb * alpha``."""
    check_rgb_alpha(rgb, alpha)
    return rgb * alpha


def unpremultiply(premultiplied: torch.Tensor, alpha: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Premultiplied -> straight colour; pixels with ``alpha <= eps`` become 0 (their colour is unknown)."""
    check_rgb_alpha(premultiplied, alpha)
    visible = alpha > eps
    return torch.where(visible, premultiplied / alpha.clamp_min(eps), torch.zeros_like(premultiplied)).clamp(
        0, 1
    )


def composite_over(
    rgb: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor | Sequence[float]
) -> torch.Tensor:
    """Straight-alpha "over": ``rgb * alpha + background * (1 - alpha)``.

    ``background`` is a colour (3 floats in ``[0, 1]``) or a tensor broadcastable to ``rgb`` (another
    image or video, e.g. a background layer).
    """
    check_rgb_alpha(rgb, alpha)
    if not isinstance(background, torch.Tensor):
        values = [float(v) for v in background]
        if len(values) != 3:
            raise ValueError(f"a background colour needs 3 values (R, G, B), got {len(values)}")
        shape = (1, 3) + (1,) * (rgb.ndim - 2)
        background = torch.tensor(values, dtype=rgb.dtype, device=rgb.device).reshape(shape)
    return rgb * alpha + background * (1 - alpha)


def grey_composite(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """What the frozen RGB VAE encodes: ``(rgb*2 - 1) * alpha`` in ``[-1, 1]``, i.e. over 50 % grey.

    Grey (0 in VAE space) is the neutral background LayerDiffuse was trained with; compositing over
    black instead is a known cause of dark fringes.
    """
    check_rgb_alpha(rgb, alpha)
    return (rgb * 2 - 1) * alpha


def signed_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """VAE pixel range ``[-1, 1]`` -> ``[0, 1]``, clamped (what the transparent decoder sees)."""
    return (pixels * 0.5 + 0.5).clamp(0, 1)


def checkerboard(
    height: int, width: int, cell: int = 16, levels: tuple[float, float] = (0.45, 0.55)
) -> torch.Tensor:
    """A ``[1, 3, H, W]`` grey checkerboard, the usual background for viewing transparent images."""
    rows = torch.arange(height) // cell
    cols = torch.arange(width) // cell
    odd = ((rows[:, None] + cols[None, :]) % 2).bool()
    board = torch.where(odd, torch.tensor(levels[1]), torch.tensor(levels[0]))
    return board.expand(1, 3, height, width).clone()
