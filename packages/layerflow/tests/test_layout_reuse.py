"""The segment layout and its tile lists are built once per sequence shape, not once per block.

A 3-block transformer on the Triton backend (interpreter on CPU) runs two training steps with
gradient checkpointing: every block's attention runs twice per step (forward, then the recompute
in backward) and once more in backward, yet the tile lists are built once and copied to the device
once, and the layout comes out of one cache entry.
"""

from __future__ import annotations

import pytest
import torch

import layer_attention.kernels.triton_autograd as triton_autograd
from layer_attention import SegmentLayout, backend_reasons
from layer_attention.layout import TileLists
from layerflow.models.attention import segment_attention_kwargs
from layerflow.testing import TINY_TEXT_LENGTH, build_tiny_transformer

BLOCKS = 3
FRAMES = 2  # 2 latent frames of 2 x 2 patches: 8 video tokens after 12 text tokens


@pytest.fixture
def counted(monkeypatch):
    counts = {"tile builds": 0, "device copies": 0, "forward launches": 0, "backward launches": 0}

    def count(name, original):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(SegmentLayout, "_build_tiles", count("tile builds", SegmentLayout._build_tiles))
    monkeypatch.setattr(TileLists, "to", count("device copies", TileLists.to))
    for name, function in (
        ("forward launches", "triton_attention_forward"),
        ("backward launches", "triton_attention_backward"),
    ):
        monkeypatch.setattr(triton_autograd, function, count(name, getattr(triton_autograd, function)))
    SegmentLayout.cache_clear()
    yield counts
    SegmentLayout.cache_clear()


def _train_steps(model, attention_kwargs, steps=2):
    model.train()
    model.enable_gradient_checkpointing()
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        video = torch.randn(1, FRAMES, 4, 4, 4, generator=generator)
        text = torch.randn(1, TINY_TEXT_LENGTH, 16, generator=generator)
        out = model(video, text, torch.tensor([500]), num_clips=FRAMES, attention_kwargs=attention_kwargs)
        out.sample.square().mean().backward()


@pytest.mark.skipif(
    bool(backend_reasons(torch.zeros(1, 1, 1, 16))["triton"]), reason="Triton cannot run here"
)
@pytest.mark.parametrize("masked", [False, True], ids=["no layout (full)", "pipeline layout"])
def test_tiles_built_once_across_blocks_steps_and_recompute(counted, masked):
    model = build_tiny_transformer(num_layers=BLOCKS, attention_head_dim=16, attention_backend="triton")
    lengths = [TINY_TEXT_LENGTH, 4, 4]
    allowed = [[1, 1, 1], [1, 1, 0], [1, 0, 1]] if masked else None
    # the pipeline builds its kwargs once per call; two calls must still share one layout
    first = segment_attention_kwargs(model, lengths, allowed) if masked else None
    second = segment_attention_kwargs(model, lengths, allowed) if masked else None
    if masked:
        assert first["layout"] is second["layout"]
    _train_steps(model, first, steps=1)
    _train_steps(model, second, steps=1)
    # measured effect of checkpointing: every block's attention ran again in backward
    assert counted["forward launches"] == 2 * 2 * BLOCKS
    assert counted["backward launches"] == 2 * BLOCKS
    assert counted["tile builds"] == 1
    assert counted["device copies"] == 1
    assert SegmentLayout.cache_info()["misses"] == 1
