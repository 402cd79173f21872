"""The generator is deterministic, its composites are exact, and its captions say what it drew."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from layerflow.synthetic import (
    COLOURS,
    SHAPES,
    SampleAttributes,
    SyntheticConfig,
    SyntheticGenerator,
    classify_colour,
    parse_caption,
    sample_seed,
)
from layerflow.synthetic.backgrounds import SHADE
from layerflow.synthetic.shapes import SHAPE_SDFS, coverage, local_coordinates

GENERATOR = SyntheticGenerator(SyntheticConfig())


def _centroid_x(alpha: torch.Tensor) -> torch.Tensor:
    xs = torch.arange(alpha.shape[-1], dtype=torch.float32) + 0.5
    return (alpha[:, 0] * xs).sum(dim=(1, 2)) / alpha[:, 0].sum(dim=(1, 2))


def test_same_seed_same_sample_and_different_seeds_differ():
    a, b, c = GENERATOR.generate(7), GENERATOR.generate(7), GENERATOR.generate(8)
    assert a.attributes == b.attributes
    for name in ("foreground", "alpha", "background", "composite"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.attributes != c.attributes
    assert not torch.equal(a.composite, c.composite)


@pytest.mark.parametrize("seed", range(6))
def test_layers_shapes_ranges_and_exact_composite(seed):
    sample = GENERATOR.generate(seed)
    t, h, w = 16, 64, 64
    assert sample.foreground.shape == (t, 3, h, w) and sample.background.shape == (t, 3, h, w)
    assert sample.alpha.shape == (t, 1, h, w) and sample.composite.shape == (t, 3, h, w)
    for layer in (sample.foreground, sample.alpha, sample.background):
        assert layer.dtype == torch.float32 and layer.min() >= 0 and layer.max() <= 1
        assert torch.equal(torch.round(layer * 255) / 255, layer)  # exactly what an 8-bit PNG holds
    expected = sample.alpha * sample.foreground + (1 - sample.alpha) * sample.background
    assert torch.equal(sample.composite, expected)


def test_alpha_is_soft_at_the_edges_and_opaque_inside():
    alpha = GENERATOR.generate(3).alpha
    fractional = ((alpha > 0) & (alpha < 1)).sum()
    assert fractional > 0 and (alpha == 1).sum() > fractional / 4


def test_static_sample_repeats_one_frame():
    generator = SyntheticGenerator(SyntheticConfig(static_probability=1.0))
    sample = generator.generate(0)
    assert sample.source == "static" and sample.attributes.static
    for layer in (sample.foreground, sample.alpha, sample.background, sample.composite):
        assert torch.equal(layer, layer[:1].expand_as(layer))
    assert parse_caption(sample.prompts["foreground"]).motion == "still"


def _with_motion(seed: int, **changes: object) -> SampleAttributes:
    attributes = GENERATOR.sample_attributes(seed)
    return replace(attributes, static=False, foreground=replace(attributes.foreground, **changes))


def test_translate_left_moves_the_object_left_by_the_planned_distance():
    attributes = _with_motion(
        1, motion="translate", direction="left", velocity=(-1.5, 0.0), center=(48.0, 32.0)
    )
    sample = GENERATOR.render(attributes)
    x = _centroid_x(sample.alpha)
    assert sample.prompts["foreground"].endswith("moving left")
    assert float(x[-1] - x[0]) == pytest.approx(-1.5 * 15, abs=0.3)


def test_bounce_keeps_the_object_inside_the_frame():
    attributes = _with_motion(2, motion="bounce", direction=None, velocity=(9.0, -7.0), center=(32.0, 32.0))
    alpha = GENERATOR.render(attributes).alpha
    inside = alpha[:, 0, 1:-1, 1:-1].sum(dim=(1, 2)) / alpha[:, 0].sum(dim=(1, 2))
    assert inside.min() > 0.97  # the shape never leaves the frame: it reflects off the walls


def test_rotate_and_scale_change_the_mask_over_time():
    spin = GENERATOR.render(
        _with_motion(0, shape="triangle", motion="rotate", direction=None, angular_velocity=0.3)
    )
    assert not torch.equal(spin.alpha[0], spin.alpha[5])
    assert spin.alpha[0].sum() == pytest.approx(float(spin.alpha[5].sum()), rel=0.05)  # same area, turned
    grow = GENERATOR.render(_with_motion(0, motion="scale", direction="growing", scale_range=(0.6, 1.3)))
    assert grow.alpha[-1].sum() / grow.alpha[0].sum() == pytest.approx((1.3 / 0.6) ** 2, rel=0.1)


@pytest.mark.parametrize("seed", range(40))
def test_captions_parse_back_to_the_sampled_attributes(seed):
    attributes = GENERATOR.sample_attributes(seed)
    captions = attributes.captions()
    fg, bg = attributes.foreground, attributes.background
    assert captions["composite"] == f"{captions['foreground']} over {captions['background']}"
    assert not captions["foreground"].startswith("0, ")
    for role in ("foreground", "composite"):
        parsed = parse_caption(captions[role])
        assert (parsed.colour, parsed.shape, parsed.size, parsed.texture) == (
            fg.colour,
            fg.shape,
            fg.size,
            fg.texture,
        )
        assert (parsed.motion, parsed.direction) == (fg.motion, fg.direction)
    for role in ("background", "composite"):
        parsed = parse_caption(captions[role])
        assert (parsed.background_colour, parsed.pattern, parsed.background_direction) == (
            bg.colour,
            bg.pattern,
            bg.direction,
        )
    assert fg.colour != bg.colour


def test_caption_examples_and_prefix():
    parsed = parse_caption("2, a red circle moving left over blue stripes drifting up")
    assert (parsed.colour, parsed.shape, parsed.motion, parsed.direction) == (
        "red",
        "circle",
        "translate",
        "left",
    )
    assert (parsed.background_colour, parsed.pattern, parsed.background_direction) == (
        "blue",
        "stripes",
        "up",
    )
    assert parse_caption("A golden retriever walking on grass") is None


def test_attributes_round_trip_through_a_dict_and_render_identically():
    attributes = GENERATOR.sample_attributes(11)
    restored = SampleAttributes.from_dict(attributes.to_dict())
    assert restored == attributes
    assert torch.equal(GENERATOR.render(restored).composite, GENERATOR.render(attributes).composite)
    with pytest.raises(ValueError, match="synthetic attribute record"):
        SampleAttributes.from_dict({"foreground": {}})


def test_split_seeds_are_disjoint_and_prefix_stable():
    train = [sample_seed(0, "train", i) for i in range(200)]
    heldout = [sample_seed(0, "heldout", i) for i in range(200)]
    assert not set(train) & set(heldout) and len(set(train)) == 200
    short = [s.sample_id for s in GENERATOR.split("heldout", 2)]
    long = list(GENERATOR.split("heldout", 3))
    assert short == [s.sample_id for s in long[:2]] == ["heldout_00000", "heldout_00001"]
    assert torch.equal(long[1].composite, GENERATOR.generate(sample_seed(0, "heldout", 1)).composite)
    with pytest.raises(ValueError, match="unknown split"):
        sample_seed(0, "validation", 0)


@pytest.mark.parametrize(
    ("shape", "area_over_r2"),
    [
        ("circle", math.pi),
        ("square", 1.6**2),
        ("triangle", 3 * math.sqrt(3) / 4),
        ("ring", math.pi * (1 - 0.6**2)),
        ("cross", 2 * 2 * 0.68 - 0.68**2),
    ],
)
def test_shape_coverage_has_the_analytic_area(shape, area_over_r2):
    radius = 20.0
    u, v = local_coordinates(96, 96, torch.tensor([[48.0, 48.0]]), torch.tensor([0.3]))
    area = float(coverage(SHAPE_SDFS[shape](u, v, torch.tensor(radius)), 1.0).sum())
    assert area == pytest.approx(area_over_r2 * radius**2, rel=0.01)


def test_star_is_a_star():
    u, v = local_coordinates(96, 96, torch.tensor([[48.0, 48.0]]), torch.tensor([0.0]))
    star = coverage(SHAPE_SDFS["star"](u, v, torch.tensor(30.0)), 1.0)[0]
    assert star[48 - 22, 48] == 1  # the upper tip (y up = row above the centre) is inside
    assert star[48 - 15, 48 + 15] == 0  # between two tips is outside
    assert star[48, 48] == 1


def test_colours_classify_to_their_own_names_also_when_shaded():
    for name, rgb in COLOURS.items():
        assert classify_colour(rgb) == name
        assert classify_colour([SHADE * c for c in rgb]) == name or name == "white"
    assert classify_colour([0.9, 0.9, 0.9]) == "white"
    with pytest.raises(ValueError, match="unknown colour"):
        classify_colour([1, 0, 0], palette=["red", "mauve"])


def test_every_shape_and_colour_can_be_drawn():
    config = SyntheticConfig(shapes=SHAPES, colours=tuple(COLOURS))
    generator = SyntheticGenerator(config)
    drawn = {generator.sample_attributes(s).foreground.shape for s in range(60)}
    assert drawn == set(SHAPES)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_frames": 0}, "num_frames"),
        ({"height": 8}, "at least 16x16"),
        ({"shapes": ("circle", "hexagon")}, "shapes"),
        ({"colours": ("red",)}, "two colours"),
        ({"pan_probability": 1.5}, "pan_probability"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**changes)


def test_other_sizes_render():
    sample = SyntheticGenerator(SyntheticConfig(num_frames=5, height=48, width=80)).generate(4)
    assert sample.composite.shape == (5, 3, 48, 80)
