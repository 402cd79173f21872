"""The words of the synthetic world and the colour classifier that reads them back from pixels.

Every attribute the generator samples has one name here, the same name the captions use, so a
caption can be parsed back into attributes and a rendered layer can be checked against them.
Colours are chosen far apart in hue so that "is this foreground red?" has one answer even after
shading (textures and background shades only scale brightness, which keeps the hue).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

# Nominal RGB in [0, 1]. Chromatic entries are told apart by hue, achromatic ones by value.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.14, 0.14),
    "orange": (1.0, 0.55, 0.08),
    "yellow": (0.95, 0.88, 0.12),
    "green": (0.18, 0.78, 0.22),
    "cyan": (0.12, 0.82, 0.88),
    "blue": (0.16, 0.28, 0.95),
    "purple": (0.58, 0.22, 0.85),
    "pink": (1.0, 0.42, 0.72),
    "white": (0.96, 0.96, 0.96),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
SIZES: dict[str, float] = {"small": 0.13, "medium": 0.19, "large": 0.26}  # radius / min(H, W)
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
FOREGROUND_MOTIONS: tuple[str, ...] = ("still", "translate", "bounce", "rotate", "scale")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
SCALE_DIRECTIONS: tuple[str, ...] = ("growing", "shrinking")
PATTERNS: tuple[str, ...] = ("gradient", "stripes", "checkerboard", "clouds")

# Below this HSV saturation a colour counts as achromatic (white); backgrounds mix a colour with a
# darker shade of itself, which keeps saturation, so the threshold does not depend on the pattern.
ACHROMATIC_SATURATION = 0.2


def unit_direction(direction: str) -> tuple[float, float]:
    """(dx, dy) in image coordinates (y points down) for a direction word."""
    return {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}[direction]


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


def classify_colour(rgb: Sequence[float], palette: Sequence[str] = tuple(COLOURS)) -> str:
    """The palette name closest to an RGB colour: by hue for saturated colours, else achromatic.

    An achromatic measurement matches the achromatic palette entries (by value); when the palette
    has none, or the colour is saturated, the nearest hue among the chromatic entries wins.
    """
    unknown = [name for name in palette if name not in COLOURS]
    if unknown:
        raise ValueError(f"unknown colour names {unknown}; known: {sorted(COLOURS)}")
    if len(rgb) != 3:
        raise ValueError(f"expected an RGB triple, got {len(rgb)} values")
    hue, saturation, value = colorsys.rgb_to_hsv(*(min(max(float(c), 0.0), 1.0) for c in rgb))
    hsv = {name: colorsys.rgb_to_hsv(*COLOURS[name]) for name in palette}
    achromatic = [n for n in palette if hsv[n][1] < ACHROMATIC_SATURATION]
    chromatic = [n for n in palette if hsv[n][1] >= ACHROMATIC_SATURATION]
    if achromatic and (saturation < ACHROMATIC_SATURATION or not chromatic):
        return min(achromatic, key=lambda n: abs(hsv[n][2] - value))
    return min(chromatic, key=lambda n: _hue_distance(hsv[n][0], hue))
