"""Sample type, model-input transform, collate, static freezing and frame sampling."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerflow.data import FrameSampler, LayeredSample, SampleError, collate_layered, sample_rng, to_static


def make_sample(t: int = 4, source: str = "video", seed: int = 0) -> LayeredSample:
    g = torch.Generator().manual_seed(seed)
    return LayeredSample(
        sample_id=f"s{seed}",
        foreground=torch.rand(t, 3, 8, 10, generator=g),
        alpha=torch.rand(t, 1, 8, 10, generator=g),
        background=torch.rand(t, 3, 8, 10, generator=g),
        composite=torch.rand(t, 3, 8, 10, generator=g),
        prompts={"foreground": "f", "background": "b", "composite": "c"},
        source=source,  # type: ignore[arg-type]
        fps=8.0,
    )


def test_model_inputs_match_official_image_process_simple():
    sample = make_sample()
    inputs = sample.to_model_inputs()
    # Official: rgb = x / 127.5 - 1, out = a * rgb  (foreground premultiplied onto 0 = mid grey).
    rgb = sample.foreground * 2 - 1
    torch.testing.assert_close(inputs.foreground, sample.alpha * rgb)
    torch.testing.assert_close(inputs.alpha, sample.alpha.expand(-1, 3, -1, -1) * 2 - 1)
    torch.testing.assert_close(inputs.background, sample.background * 2 - 1)
    assert inputs.concat().shape == (16, 3, 8, 10)
    torch.testing.assert_close(inputs.concat()[4:8], inputs.alpha)


def test_sample_rejects_bad_shapes_and_prompts():
    sample = make_sample()
    with pytest.raises(ValueError, match="alpha has shape"):
        LayeredSample(**{**vars(sample), "alpha": torch.rand(3, 1, 8, 10)})
    with pytest.raises(ValueError, match="prompts lack"):
        LayeredSample(**{**vars(sample), "prompts": {"foreground": "f"}})


def test_collate_stacks_and_gates_by_source():
    batch = collate_layered([make_sample(seed=0), make_sample(source="static", seed=1)])
    assert batch.foreground.shape == (2, 4, 3, 8, 10)
    assert batch.is_static.tolist() == [0.0, 1.0]
    assert batch.layer_prompts() == [["f", "b", "c"], ["f", "b", "c"]]
    torch.testing.assert_close(batch.to_model_inputs().alpha[1], make_sample(seed=1).to_model_inputs().alpha)
    with pytest.raises(ValueError, match="cannot batch"):
        collate_layered([make_sample(t=4), make_sample(t=2)])


def test_to_static_repeats_one_frame():
    sample = make_sample()
    frozen = to_static(sample, 2, num_frames=5)
    assert frozen.source == "static" and frozen.num_frames == 5
    for t in range(5):
        torch.testing.assert_close(frozen.background[t], sample.background[2])


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
        check_raw_layers("clip7", RawLayers(frames, alpha, frames))
    assert raised.value.sample_id == "clip7"
    with pytest.raises(SampleError, match="background has 2 frames of 4x3"):
        check_raw_layers("clip7", RawLayers(frames, np.ones_like(alpha), frames[:, :, :3]))
