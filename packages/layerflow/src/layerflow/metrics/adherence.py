"""Does a generated layer show what its synthetic caption asked for? Colour and shape checks.

The caption is parsed with the synthetic world's grammar (`layerflow.synthetic.parse_caption`);
the layer is measured from pixels: the foreground colour is the alpha-weighted mean colour of its
opaque part (alpha >= 0.5), the background colour the mean colour of the frame, each named by
`classify_colour`; the shape is found by matching the opaque mask against every shape of the
vocabulary, rendered with the same area and centroid at 24 orientations (best IoU wins), voted
over frames.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from layerflow.synthetic.attributes import parse_caption
from layerflow.synthetic.shapes import SHAPE_SDFS, coverage, local_coordinates
from layerflow.synthetic.vocabulary import SHAPES, classify_colour

OPAQUE = 0.5
ORIENTATIONS = 24
CLASSIFY_SIZE = 128  # larger mattes are downsampled to about this size before shape matching
_REFERENCE_RADIUS = 40.0


@dataclass(frozen=True)
class AdherenceCheck:
    """One attribute: what the caption asked for, what the pixels show, and whether they agree."""

    attribute: str
    expected: str
    measured: str

    @property
    def match(self) -> bool:
        return self.expected == self.measured


def foreground_colour(foreground: Tensor, alpha: Tensor) -> str | None:
    """Colour name of the opaque part of a foreground ``[T, 3, H, W]`` / ``[T, 1, H, W]``; None if empty."""
    weight = alpha * (alpha >= OPAQUE)
    total = float(weight.sum())
    if total == 0:
        return None
    mean = (foreground * weight).sum(dim=(0, 2, 3)) / total
    return classify_colour(mean.tolist())


def background_colour(background: Tensor) -> str:
    """Colour name of the mean colour of a background ``[T, 3, H, W]``."""
    return classify_colour(background.mean(dim=(0, 2, 3)).tolist())


def _unit_areas() -> dict[str, float]:
    """Area / radius^2 of each shape, measured on the same rasteriser that draws them."""
    size = int(4 * _REFERENCE_RADIUS)
    center = torch.tensor([[size / 2, size / 2]])
    u, v = local_coordinates(size, size, center, torch.zeros(1))
    radius = torch.tensor(_REFERENCE_RADIUS)
    return {
        name: float(coverage(sdf(u, v, radius), 1.0).sum()) / _REFERENCE_RADIUS**2
        for name, sdf in SHAPE_SDFS.items()
    }


_UNIT_AREAS = _unit_areas()


def classify_shape_frame(mask: Tensor) -> str | None:
    """Best-matching shape name for one bool mask ``[H, W]``; None if the mask is empty."""
    area = float(mask.sum())
    if area == 0:
        return None
    h, w = mask.shape
    ys, xs = torch.nonzero(mask, as_tuple=True)
    cx, cy = float(xs.double().mean()) + 0.5, float(ys.double().mean()) + 0.5
    radii = {name: math.sqrt(area / _UNIT_AREAS[name]) for name in SHAPES}
    # Work in a window holding the mask and every template (all shapes fit in 1.15 radii).
    reach = 1.15 * max(radii.values()) + 2
    top = max(0, min(int(ys.min()), math.floor(cy - reach)))
    bottom = min(h, max(int(ys.max()) + 1, math.ceil(cy + reach)))
    left = max(0, min(int(xs.min()), math.floor(cx - reach)))
    right = min(w, max(int(xs.max()) + 1, math.ceil(cx + reach)))
    window = mask[top:bottom, left:right]
    center = torch.tensor([[cx - left, cy - top]]).expand(ORIENTATIONS, 2)
    angles = torch.arange(ORIENTATIONS, dtype=torch.float32) * (2 * math.pi / ORIENTATIONS)
    u, v = local_coordinates(bottom - top, right - left, center, angles)
    scores = {}
    for name in SHAPES:
        template = coverage(SHAPE_SDFS[name](u, v, torch.tensor(radii[name])), 1.0) >= OPAQUE
        inter = (template & window).sum(dim=(1, 2)).double()
        union = (template | window).sum(dim=(1, 2)).double()
        scores[name] = float((inter / union.clamp(min=1)).max())
    return max(scores, key=lambda k: scores[k])


def foreground_shape(alpha: Tensor, max_frames: int = 4) -> str | None:
    """Majority shape over up to ``max_frames`` evenly spaced frames of an alpha ``[T, 1, H, W]``."""
    frames, _, height, width = alpha.shape
    factor = math.ceil(max(height, width) / CLASSIFY_SIZE)
    if factor > 1:  # shapes are scale-free: classify large frames on an area-downsampled matte
        alpha = F.avg_pool2d(alpha, factor, ceil_mode=True)
    picks = sorted({round(i * (frames - 1) / max(max_frames - 1, 1)) for i in range(min(max_frames, frames))})
    votes = [classify_shape_frame(alpha[t, 0] >= OPAQUE) for t in picks]
    counted = Counter(v for v in votes if v is not None)
    return counted.most_common(1)[0][0] if counted else None


def check_adherence(
    prompts: dict[str, str],
    foreground: Tensor | None = None,
    alpha: Tensor | None = None,
    background: Tensor | None = None,
) -> list[AdherenceCheck]:
    """Checks for every attribute a synthetic prompt names and the given layers can show.

    ``prompts`` maps roles ("foreground", "background", "composite") to captions; the foreground
    caption (else the composite's) gives colour and shape, the background caption (else the
    composite's) the background colour. Prompts outside the synthetic grammar give no checks.
    """
    parsed = {role: parse_caption(text) for role, text in prompts.items() if text}
    fg_caption = parsed.get("foreground") or parsed.get("composite")
    bg_caption = parsed.get("background") or parsed.get("composite")
    checks: list[AdherenceCheck] = []
    if fg_caption and fg_caption.colour and foreground is not None and alpha is not None:
        checks.append(
            AdherenceCheck(
                "foreground_colour", fg_caption.colour, foreground_colour(foreground, alpha) or "none"
            )
        )
    if fg_caption and fg_caption.shape and alpha is not None:
        checks.append(AdherenceCheck("foreground_shape", fg_caption.shape, foreground_shape(alpha) or "none"))
    if bg_caption and bg_caption.background_colour and background is not None:
        checks.append(
            AdherenceCheck("background_colour", bg_caption.background_colour, background_colour(background))
        )
    return checks
