"""Sample type (layers by name), depth-order compositing, layout matching, collate, static freezing, frame sampling."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerflow.data import (
    FrameSampler,
    Layer,
    LayeredSample,
    SampleError,
    collate_layered,
    composite_layers,
    foreground_names,
    sample_rng,
    to_static,
)
from layerflow.layout import LayerLayout


def make_sample(t: int = 4, source: str = "video", seed: int = 0, foregrounds: int = 1) -> LayeredSample:
    g = torch.Generator().manual_seed(seed)
    layers = {
        name: Layer("foreground", torch.rand(t, 3, 8, 10, generator=g), torch.rand(t, 1, 8, 10, generator=g))
        for name in foreground_names(foregrounds)
    }
    layers["background"] = Layer("background", torch.rand(t, 3, 8, 10, generator=g))
    layers["composite"] = Layer("composite", torch.rand(t, 3, 8, 10, generator=g))
    return LayeredSample(
        sample_id=f"s{seed}",
        layers=layers,
        prompts={name: name[0] + name[-1] for name in layers},
        source=source,  # type: ignore[arg-type]
        fps=8.0,
    )


def test_composite_is_the_exact_over_of_foregrounds_front_to_back():
    sample = make_sample(foregrounds=2)
    front, back = sample.layers["foreground_0"], sample.layers["foreground_1"]
    background = sample.layers["background"].rgb
    behind = back.alpha * back.rgb + (1 - back.alpha) * background
    expected = front.alpha * front.rgb + (1 - front.alpha) * behind
    torch.testing.assert_close(composite_layers([front, back], background), expected)
    assert sample.frames()["foreground_0"].shape == (4, 4, 8, 10)  # straight RGBA, as pipeline conditions
    assert sample.frames()["background"].shape == (4, 3, 8, 10)


def test_sample_rejects_bad_shapes_and_prompts():
    sample = make_sample()
    bad = dict(
        sample.layers,
        foreground=Layer("foreground", sample.layers["foreground"].rgb, torch.rand(3, 1, 8, 10)),
    )
    with pytest.raises(ValueError, match="layer 'foreground' alpha has shape"):
        LayeredSample(**{**vars(sample), "layers": bad})
    opaque_fg = dict(sample.layers, foreground=Layer("foreground", sample.layers["foreground"].rgb))
    with pytest.raises(ValueError, match="layer 'foreground' alpha has shape None"):
        LayeredSample(**{**vars(sample), "layers": opaque_fg})
    with pytest.raises(ValueError, match=r"prompts lack layer\(s\) \['background', 'composite'\]"):
        LayeredSample(**{**vars(sample), "prompts": {"foreground": "f"}})


def test_for_layout_matches_by_name_then_by_role_in_depth_order():
    sample = make_sample(foregrounds=2)
    same = sample.for_layout(LayerLayout.with_foregrounds(2))
    assert list(same.layers) == ["foreground_0", "foreground_1", "background", "composite"]
    custom = LayerLayout.from_dict(
        {
            "alpha": "alpha_clip",
            "layers": [
                {"name": "near", "role": "foreground"},
                {"name": "far", "role": "foreground"},
                {"name": "bg", "role": "background"},
                {"name": "blend", "role": "composite"},
            ],
        }
    )
    renamed = sample.for_layout(custom)
    assert list(renamed.layers) == ["near", "far", "bg", "blend"]
    assert renamed.layers["far"] is sample.layers["foreground_1"]
    assert renamed.prompts["far"] == sample.prompts["foreground_1"]
    with pytest.raises(ValueError, match=r"sample 's0' has layers .*the model's layout needs"):
        sample.for_layout(LayerLayout.official())


def test_collate_stacks_and_gates_by_source():
    batch = collate_layered([make_sample(seed=0), make_sample(source="static", seed=1)])
    assert batch.layers["foreground"].rgb.shape == (2, 4, 3, 8, 10)
    assert batch.layers["foreground"].alpha.shape == (2, 4, 1, 8, 10)
    assert batch.layers["background"].alpha is None
    assert batch.is_static.tolist() == [0.0, 1.0]
    assert batch.prompts == {
        "foreground": ["fd", "fd"],
        "background": ["bd", "bd"],
        "composite": ["ce", "ce"],
    }
    torch.testing.assert_close(batch.layers["composite"].rgb[1], make_sample(seed=1).layers["composite"].rgb)
    with pytest.raises(ValueError, match="cannot batch"):
        collate_layered([make_sample(t=4), make_sample(t=2)])
    with pytest.raises(ValueError, match="one layer layout"):
        collate_layered([make_sample(), make_sample(foregrounds=2)])


def test_to_static_repeats_one_frame():
    sample = make_sample(foregrounds=2)
    frozen = to_static(sample, 2, num_frames=5)
    assert frozen.source == "static" and frozen.num_frames == 5
    for t in range(5):
        for name, layer in frozen.layers.items():
            torch.testing.assert_close(layer.frames[t], sample.layers[name].frames[2])


def test_official_sampler_duplicates_one_frame():
    sampler = FrameSampler(num_frames=16, official=True, start="first")
    picked = sampler.indices(40, 8.0, sample_rng(0, 0, 0))
    assert picked.tolist() == np.linspace(0, 14, 16).astype(int).tolist()
    assert len(set(picked.tolist())) == 15


def test_stride_fps_and_determinism():
    sampler = FrameSampler(num_frames=4, target_fps=8)
    picked = sampler.indices(40, 24.0, sample_rng(3, 1, 7))
    assert np.diff(picked).tolist() == [3, 3, 3]
    again = sampler.indices(40, 24.0, sample_rng(3, 1, 7))
    assert picked.tolist() == again.tolist()
    starts = {int(sampler.indices(40, 24.0, sample_rng(3, epoch, 7))[0]) for epoch in range(20)}
    assert len(starts) > 1
    offset = FrameSampler(num_frames=3, stride=2, start="first", start_offset=5).indices(
        20, 8.0, sample_rng(0, 0, 0)
    )
    assert offset.tolist() == [5, 7, 9]
    with pytest.raises(ValueError, match="need"):
        FrameSampler(num_frames=8, stride=2).indices(10, 8.0, sample_rng(0, 0, 0))


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 60),
    num_frames=st.integers(1, 16),
    stride=st.integers(1, 4),
    offset=st.integers(0, 5),
    official=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sampler_indices_are_valid_windows(length, num_frames, stride, offset, official, seed):
    sampler = FrameSampler(num_frames=num_frames, stride=stride, start_offset=offset, official=official)
    try:
        picked = sampler.indices(length, 8.0, sample_rng(seed, 0, 0))
    except ValueError:
        usable = length - offset
        assert usable < (1 if official else (num_frames - 1) * stride + 1)
        return
    assert len(picked) == num_frames
    assert offset <= picked.min() and picked.max() < length
    assert (np.diff(picked) >= 0).all()
    if not official:
        assert (np.diff(picked) == stride).all()


@pytest.mark.parametrize(
    ("alpha_value", "message"),
    [
        (1.5, r"alpha values span \[0, 1.5\]"),
        (float("nan"), "NaN"),
        (0.0, "empty foreground"),
        (3 / 255, "object-id"),
    ],
)
def test_raw_layer_checks_name_the_problem(alpha_value, message):
    from layerflow.data.checks import RawLayers, check_raw_layers

    frames = np.full((2, 4, 4, 3), 0.5, np.float32)
    alpha = np.zeros((2, 4, 4, 1), np.float32)
    alpha[0, 1, 1] = alpha_value
    with pytest.raises(SampleError, match=message) as raised:
        check_raw_layers("clip7", RawLayers.single(frames, alpha, frames))
    assert raised.value.sample_id == "clip7"
    with pytest.raises(SampleError, match="background has 2 frames of 4x3"):
        check_raw_layers("clip7", RawLayers.single(frames, np.ones_like(alpha), frames[:, :, :3]))
