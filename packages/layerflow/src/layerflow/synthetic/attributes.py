"""Machine-readable attributes of one synthetic sample, and the captions built from them.

The caption words are a pure function of the *semantic* fields (colour, shape, size, texture,
motion, direction, pattern); the remaining fields are rendering parameters. ``parse_*`` invert the
caption functions, so prompt-adherence metrics can recover what was asked from the prompt alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from .vocabulary import COLOURS, DIRECTIONS, PATTERNS, SCALE_DIRECTIONS, SHAPES, SIZES, TEXTURES


@dataclass(frozen=True)
class ForegroundAttributes:
    """One object: what it is (caption fields) and how it is drawn (pixels, radians, per frame).

    ``direction`` is a direction word for ``translate``, ``"growing"``/``"shrinking"`` for
    ``scale`` and ``None`` otherwise. ``center`` is the position at frame 0 in pixels (x, y);
    ``velocity`` is in pixels per frame; ``scale_range`` gives the radius factor at the first and
    last frame; ``edge_width`` is the anti-aliasing ramp of the alpha edge in pixels.
    """

    colour: str
    shape: str
    size: str
    texture: str
    motion: str
    direction: str | None
    radius: float
    center: tuple[float, float]
    velocity: tuple[float, float]
    angle: float
    angular_velocity: float
    scale_range: tuple[float, float]
    edge_width: float
    texture_period: float

    def caption(self) -> str:
        words = ["a"]
        if self.size != "medium":
            words.append(self.size)
        words.append(self.colour)
        if self.texture != "plain":
            words.append(self.texture)
        words.append(self.shape)
        phrase = {
            "still": None,
            "translate": f"moving {self.direction}",
            "bounce": "bouncing around",
            "rotate": "spinning",
            "scale": self.direction,
        }[self.motion]
        if phrase:
            words.append(phrase)
        return " ".join(words)


@dataclass(frozen=True)
class BackgroundAttributes:
    """A two-tone pattern (the colour and a darker shade of it) and an optional camera pan.

    ``direction`` is the drift direction word of the pan or ``None`` for a still camera; ``pan``
    is the content shift in pixels per frame; ``period`` and ``angle`` size and orient the pattern;
    ``phase`` offsets it; ``noise_seed`` seeds the cloud lattice.
    """

    colour: str
    pattern: str
    direction: str | None
    pan: tuple[float, float]
    period: float
    angle: float
    phase: float
    noise_seed: int

    def caption(self) -> str:
        caption = f"{self.colour} {self.pattern}"
        return f"{caption} drifting {self.direction}" if self.direction else caption


@dataclass(frozen=True)
class SampleAttributes:
    """Everything that determines one sample; ``static`` clips repeat one frame (source "static")."""

    foreground: ForegroundAttributes
    background: BackgroundAttributes
    static: bool

    def captions(self) -> dict[str, str]:
        """Prompts by role, without the layer-index prefix (the prompt encoder adds ``"0, "``)."""
        fg, bg = self.foreground.caption(), self.background.caption()
        return {"foreground": fg, "background": bg, "composite": f"{fg} over {bg}"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleAttributes:
        try:
            fg = dict(data["foreground"])
            bg = dict(data["background"])
            for key in ("center", "velocity", "scale_range"):
                fg[key] = tuple(fg[key])
            bg["pan"] = tuple(bg["pan"])
            return cls(ForegroundAttributes(**fg), BackgroundAttributes(**bg), bool(data["static"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a synthetic attribute record: {error}") from error


@dataclass(frozen=True)
class CaptionAttributes:
    """What a caption asks for. Missing parts (e.g. a background-only prompt) are ``None``."""

    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    texture: str | None = None
    motion: str | None = None
    direction: str | None = None
    background_colour: str | None = None
    pattern: str | None = None
    background_direction: str | None = None


def _alternatives(words: Iterable[str]) -> str:
    return "|".join(sorted(map(re.escape, words), key=len, reverse=True))


_FOREGROUND = re.compile(
    rf"a (?:(?P<size>{_alternatives(s for s in SIZES if s != 'medium')}) )?(?P<colour>{_alternatives(COLOURS)}) "
    rf"(?:(?P<texture>{_alternatives(t for t in TEXTURES if t != 'plain')}) )?(?P<shape>{_alternatives(SHAPES)})"
    rf"(?: (?:moving (?P<translate>{_alternatives(DIRECTIONS)})|(?P<bounce>bouncing around)|(?P<rotate>spinning)"
    rf"|(?P<scale>{_alternatives(SCALE_DIRECTIONS)})))?"
)
_BACKGROUND = re.compile(
    rf"(?P<bg_colour>{_alternatives(COLOURS)}) (?P<pattern>{_alternatives(PATTERNS)})"
    rf"(?: drifting (?P<bg_direction>{_alternatives(DIRECTIONS)}))?"
)


def _foreground_fields(match: re.Match[str]) -> dict[str, str | None]:
    motion, direction = "still", None
    if match["translate"]:
        motion, direction = "translate", match["translate"]
    elif match["bounce"]:
        motion = "bounce"
    elif match["rotate"]:
        motion = "rotate"
    elif match["scale"]:
        motion, direction = "scale", match["scale"]
    return {
        "colour": match["colour"],
        "shape": match["shape"],
        "size": match["size"] or "medium",
        "texture": match["texture"] or "plain",
        "motion": motion,
        "direction": direction,
    }


def _background_fields(match: re.Match[str]) -> dict[str, str | None]:
    return {
        "background_colour": match["bg_colour"],
        "pattern": match["pattern"],
        "background_direction": match["bg_direction"],
    }


def parse_caption(caption: str) -> CaptionAttributes | None:
    """Attributes asked for by a synthetic caption of any role, or ``None`` if it is not one.

    Accepts foreground (``"a red circle moving left"``), background (``"blue stripes drifting up"``)
    and composite (``"<foreground> over <background>"``) captions, with or without the ``"i, "``
    layer-index prefix.
    """
    text = re.sub(r"^\d+, ", "", caption.strip().lower())
    if match := _FOREGROUND.fullmatch(text):
        return CaptionAttributes(**_foreground_fields(match))
    if match := _BACKGROUND.fullmatch(text):
        return CaptionAttributes(**_background_fields(match))
    if match := re.fullmatch(r"(?P<fg>.+) over (?P<bg>.+)", text):
        fg, bg = _FOREGROUND.fullmatch(match["fg"]), _BACKGROUND.fullmatch(match["bg"])
        if fg and bg:
            return CaptionAttributes(**_foreground_fields(fg), **_background_fields(bg))
    return None
