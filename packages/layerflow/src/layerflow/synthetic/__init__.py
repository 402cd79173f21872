"""Procedural layered videos with exact alpha, composites and attribute captions (the embedded world)."""

from .attributes import (
    BackgroundAttributes,
    CaptionAttributes,
    ForegroundAttributes,
    SampleAttributes,
    parse_caption,
)
from .generator import SPLITS, SyntheticConfig, SyntheticGenerator, SyntheticSample, sample_seed
from .vocabulary import COLOURS, PATTERNS, SHAPES, classify_colour

__all__ = [
    "COLOURS",
    "PATTERNS",
    "SHAPES",
    "SPLITS",
    "BackgroundAttributes",
    "CaptionAttributes",
    "ForegroundAttributes",
    "SampleAttributes",
    "SyntheticConfig",
    "SyntheticGenerator",
    "SyntheticSample",
    "classify_colour",
    "parse_caption",
    "sample_seed",
]
