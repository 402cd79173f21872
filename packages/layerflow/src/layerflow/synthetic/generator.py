"""The procedural layered-video generator: attributes from a seed, then layers from attributes.

Sampling (numpy ``Generator`` seeded per sample) and rendering (vectorised torch over frames and
pixels) are separate, so a sample is reproducible from its seed alone and from its recorded
attributes alone. Layers are quantised to 8 bits *before* compositing: the tensors returned are
exactly what the PNG files hold, and ``composite == alpha * foreground + (1 - alpha) * background``
holds exactly for them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from layerflow.compositing import over

from .attributes import BackgroundAttributes, ForegroundAttributes, SampleAttributes
from .backgrounds import render_background
from .shapes import SHAPE_SDFS, coverage, local_coordinates
from .vocabulary import (
    COLOURS,
    DIRECTIONS,
    FOREGROUND_MOTIONS,
    PATTERNS,
    SCALE_DIRECTIONS,
    SHAPES,
    SIZES,
    TEXTURES,
    unit_direction,
)

SPLITS: tuple[str, ...] = ("train", "heldout")
TEXTURE_DEPTH = 0.35  # textures darken the object colour by up to this fraction (hue is kept)


@dataclass(frozen=True)
class SyntheticConfig:
    """What the synthetic world may contain and how large its clips are.

    Args:
        num_frames (`int`, defaults to 16): frames per clip.
        height (`int`, defaults to 64), width (`int`, defaults to 64): frame size in pixels.
        fps (`int`, defaults to 8): frame rate recorded with each sample.
        colours, shapes, sizes, textures, motions, patterns (`tuple[str, ...]`): the vocabulary
            subsets to sample from (see `layerflow.synthetic.vocabulary`).
        static_probability (`float`, defaults to 0.15): chance that a clip is one repeated frame
            (source "static", like LayerFlow's static layered images).
        pan_probability (`float`, defaults to 0.5): chance that a moving clip's camera pans.
    """

    num_frames: int = 16
    height: int = 64
    width: int = 64
    fps: int = 8
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    sizes: tuple[str, ...] = tuple(SIZES)
    textures: tuple[str, ...] = TEXTURES
    motions: tuple[str, ...] = FOREGROUND_MOTIONS
    patterns: tuple[str, ...] = PATTERNS
    static_probability: float = 0.15
    pan_probability: float = 0.5

    def __post_init__(self) -> None:
        for name, value in (("num_frames", self.num_frames), ("height", self.height), ("width", self.width)):
            if value < 1:
                raise ValueError(f"SyntheticConfig.{name} must be >= 1, got {value}")
        if min(self.height, self.width) < 16:
            raise ValueError(f"frames must be at least 16x16 pixels, got {self.height}x{self.width}")
        if self.fps < 1:
            raise ValueError(f"SyntheticConfig.fps must be >= 1, got {self.fps}")
        known = {
            "colours": tuple(COLOURS),
            "shapes": SHAPES,
            "sizes": tuple(SIZES),
            "textures": TEXTURES,
            "motions": FOREGROUND_MOTIONS,
            "patterns": PATTERNS,
        }
        for name, allowed in known.items():
            chosen = getattr(self, name)
            unknown = [w for w in chosen if w not in allowed]
            if not chosen or unknown:
                raise ValueError(
                    f"SyntheticConfig.{name} must be a non-empty subset of {allowed}, got {chosen}"
                )
        if len(self.colours) < 2:
            raise ValueError("SyntheticConfig.colours needs two colours (foreground and background differ)")
        for name in ("static_probability", "pan_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SyntheticConfig.{name} must be in [0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class SyntheticSample:
    """One rendered sample: layers ``[T, C, H, W]`` float32 in [0, 1] (alpha straight, C = 1)."""

    sample_id: str
    attributes: SampleAttributes
    foreground: Tensor
    alpha: Tensor
    background: Tensor
    composite: Tensor
    fps: int

    @property
    def prompts(self) -> dict[str, str]:
        return self.attributes.captions()

    @property
    def source(self) -> str:
        return "static" if self.attributes.static else "video"


def sample_seed(seed: int, split: str, index: int) -> int:
    """The seed of sample ``index`` of ``split``: independent streams, disjoint between splits."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    sequence = np.random.SeedSequence([seed, SPLITS.index(split), index])
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def _quantise(x: Tensor) -> Tensor:
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


class SyntheticGenerator:
    """Samples and renders layered clips for one `SyntheticConfig`.

    ```python
    generator = SyntheticGenerator(SyntheticConfig())
    sample = generator.generate(seed=0, sample_id="demo")
    sample.prompts["composite"]  # e.g. "a red circle moving left over blue stripes drifting up"
    ```
    """

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config or SyntheticConfig()

    # -- attributes ------------------------------------------------------------------------------
    def sample_attributes(self, seed: int) -> SampleAttributes:
        cfg = self.config
        rng = np.random.default_rng(seed)
        static = bool(rng.random() < cfg.static_probability)
        fg_colour = str(rng.choice(cfg.colours))
        bg_colour = str(rng.choice([c for c in cfg.colours if c != fg_colour]))
        foreground = self._foreground(rng, fg_colour, static)
        background = self._background(rng, bg_colour, static)
        return SampleAttributes(foreground=foreground, background=background, static=static)

    def _foreground(self, rng: np.random.Generator, colour: str, static: bool) -> ForegroundAttributes:
        cfg = self.config
        size = str(rng.choice(cfg.sizes))
        side = min(cfg.height, cfg.width)
        radius = SIZES[size] * side * float(rng.uniform(0.9, 1.1))
        motion = "still" if static else str(rng.choice(cfg.motions))
        frames = max(cfg.num_frames - 1, 1)
        direction: str | None = None
        velocity = (0.0, 0.0)
        angular_velocity = 0.0
        scale_range = (1.0, 1.0)
        # Keep the whole object (at its largest, for "scale") inside the frame where it fits.
        margin = min(radius * (1.4 if motion == "scale" else 1.1), side / 2)
        center = (
            float(rng.uniform(margin, cfg.width - margin)),
            float(rng.uniform(margin, cfg.height - margin)),
        )
        if motion == "translate":
            direction = str(rng.choice(DIRECTIONS))
            dx, dy = unit_direction(direction)
            extent = cfg.width if dx else cfg.height
            travel = float(rng.uniform(0.25, 0.45)) * extent
            velocity = (dx * travel / frames, dy * travel / frames)
            along = extent / 2 - (dx + dy) * travel / 2  # start so the path is centred in the frame
            center = (along, center[1]) if dx else (center[0], along)
        elif motion == "bounce":
            heading = float(rng.uniform(0, 2 * math.pi))
            speed = float(rng.uniform(0.06, 0.1)) * side
            velocity = (speed * math.cos(heading), speed * math.sin(heading))
        elif motion == "rotate":
            angular_velocity = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.12, 0.25))
        elif motion == "scale":
            direction = str(rng.choice(SCALE_DIRECTIONS))
            small, large = float(rng.uniform(0.55, 0.7)), float(rng.uniform(1.2, 1.35))
            scale_range = (small, large) if direction == "growing" else (large, small)
        return ForegroundAttributes(
            colour=colour,
            shape=str(rng.choice(cfg.shapes)),
            size=size,
            texture=str(rng.choice(cfg.textures)),
            motion=motion,
            direction=direction,
            radius=radius,
            center=center,
            velocity=velocity,
            angle=float(rng.uniform(-0.3, 0.3)),
            angular_velocity=angular_velocity,
            scale_range=scale_range,
            edge_width=float(rng.uniform(1.0, 2.5)),
            texture_period=float(rng.uniform(0.35, 0.6)) * radius,
        )

    def _background(self, rng: np.random.Generator, colour: str, static: bool) -> BackgroundAttributes:
        cfg = self.config
        pattern = str(rng.choice(cfg.patterns))
        side = min(cfg.height, cfg.width)
        direction: str | None = None
        pan = (0.0, 0.0)
        if not static and rng.random() < cfg.pan_probability:
            direction = str(rng.choice(DIRECTIONS))
            dx, dy = unit_direction(direction)
            speed = float(rng.uniform(0.02, 0.04)) * side
            pan = (dx * speed, dy * speed)
        period_scale = {
            "gradient": (2.0, 3.0),
            "stripes": (0.2, 0.35),
            "checkerboard": (0.25, 0.4),
            "clouds": (1.5, 2.5),
        }
        low, high = period_scale[pattern]
        # Stripes and checkers must show their motion: keep them from running parallel to the pan.
        angle = float(rng.choice([0.0, math.pi / 2, math.pi / 4, -math.pi / 4]))
        if direction is not None and pattern == "stripes":
            angle = 0.0 if direction in ("left", "right") else math.pi / 2
        return BackgroundAttributes(
            colour=colour,
            pattern=pattern,
            direction=direction,
            pan=pan,
            period=float(rng.uniform(low, high)) * side,
            angle=angle,
            phase=float(rng.uniform(0, 1)),
            noise_seed=int(rng.integers(0, 2**31 - 1)),
        )

    # -- rendering -------------------------------------------------------------------------------
    def _trajectory(self, fg: ForegroundAttributes) -> tuple[Tensor, Tensor, Tensor]:
        """Per-frame centres ``[T, 2]``, angles ``[T]`` and radii ``[T]``."""
        cfg = self.config
        t = torch.arange(cfg.num_frames, dtype=torch.float64)
        x = fg.center[0] + fg.velocity[0] * t
        y = fg.center[1] + fg.velocity[1] * t
        if fg.motion == "bounce":  # reflect off the walls: a triangle wave between the margins
            margin = fg.radius * 1.05
            x = _reflect(x, margin, cfg.width - margin)
            y = _reflect(y, margin, cfg.height - margin)
        angles = fg.angle + fg.angular_velocity * t
        progress = t / max(cfg.num_frames - 1, 1)
        scale = fg.scale_range[0] + (fg.scale_range[1] - fg.scale_range[0]) * progress
        return torch.stack([x, y], dim=1), angles, fg.radius * scale

    def _texture(self, fg: ForegroundAttributes, u: Tensor, v: Tensor) -> Tensor:
        """Darkening pattern in [0, 1] in object coordinates (it moves and turns with the object)."""
        period = fg.texture_period
        if fg.texture == "plain":
            return torch.zeros_like(u)
        if fg.texture == "striped":
            return 0.5 + 0.5 * torch.tanh(3.0 * torch.sin(2 * math.pi * u / period))
        if fg.texture == "checkered":
            product = torch.sin(2 * math.pi * u / period) * torch.sin(2 * math.pi * v / period)
            return 0.5 + 0.5 * torch.tanh(6.0 * product)
        if fg.texture == "dotted":
            cu = u / period - torch.round(u / period)
            cv = v / period - torch.round(v / period)
            return (0.5 - (torch.sqrt(cu * cu + cv * cv) - 0.25) * period).clamp(0.0, 1.0)
        raise ValueError(f"unknown texture {fg.texture!r}")

    def render(self, attributes: SampleAttributes, sample_id: str = "sample") -> SyntheticSample:
        cfg = self.config
        fg = attributes.foreground
        if fg.shape not in SHAPE_SDFS:
            raise ValueError(f"unknown shape {fg.shape!r}; known: {sorted(SHAPE_SDFS)}")
        if fg.colour not in COLOURS or attributes.background.colour not in COLOURS:
            raise ValueError(f"unknown colour in {fg.colour!r} / {attributes.background.colour!r}")
        centers, angles, radii = self._trajectory(fg)
        u, v = local_coordinates(cfg.height, cfg.width, centers, angles)
        distance = SHAPE_SDFS[fg.shape](u, v, radii.view(-1, 1, 1).float())
        alpha = coverage(distance, fg.edge_width).unsqueeze(1)
        shade = 1.0 - TEXTURE_DEPTH * self._texture(fg, u, v).unsqueeze(1)
        colour = torch.tensor(COLOURS[fg.colour], dtype=torch.float32).view(1, 3, 1, 1)
        foreground = colour * shade
        background = render_background(attributes.background, cfg.num_frames, cfg.height, cfg.width)
        if attributes.static:  # one frame repeated: the renderer already made them equal; make it exact
            foreground, alpha, background = (
                x[:1].expand_as(x).contiguous() for x in (foreground, alpha, background)
            )
        foreground, alpha, background = _quantise(foreground), _quantise(alpha), _quantise(background)
        composite = over(foreground, alpha, background)
        return SyntheticSample(sample_id, attributes, foreground, alpha, background, composite, cfg.fps)

    def generate(self, seed: int, sample_id: str = "sample") -> SyntheticSample:
        """Attributes from ``seed``, then the rendered layers."""
        return self.render(self.sample_attributes(seed), sample_id)

    def split(self, split: str, count: int, seed: int = 0) -> Iterator[SyntheticSample]:
        """``count`` samples of ``split`` ("train" or "heldout"), ids ``<split>_00000``, ...

        Sample ``i`` depends only on ``(seed, split, i)``, so splits never share a sample and a
        longer split extends a shorter one.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        for index in range(count):
            yield self.generate(sample_seed(seed, split, index), f"{split}_{index:05d}")


def _reflect(x: Tensor, low: float, high: float) -> Tensor:
    """Fold positions into ``[low, high]`` as a ball bouncing elastically between two walls."""
    span = max(high - low, 1e-6)
    phase = torch.remainder(x - low, 2 * span)
    return low + torch.where(phase > span, 2 * span - phase, phase)
