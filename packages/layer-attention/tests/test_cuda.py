"""The CUDA subset (``pytest -m gpu``): compiled Triton kernels and dispatch on the real device.

Few shapes, fixed kernel configs (``LAYER_ATTENTION_AUTOTUNE=0`` from the conftest), so the whole
subset compiles each kernel a handful of times and runs in well under a minute. Skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch

from layer_attention import (
    AttentionCall,
    SegmentLayout,
    backend_reasons,
    conditional_layout,
    explain_auto,
    layer_attention,
    layerflow_layout,
    packaged_table,
    select_backend,
)
from layer_attention.layout import TileLists
from layer_attention.testing import check_against_reference, qkv, small_layerflow_layouts

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize(
    ("name", "dtype", "head_dim"),
    [
        ("conditional", torch.bfloat16, 64),
        ("3 prompts + 4 clips", torch.bfloat16, 64),
        ("per-layer", torch.float16, 128),
    ],
)
def test_compiled_kernel_matches_reference(name, dtype, head_dim):
    """Ragged LayerFlow-shaped layouts (boundaries inside 128-token tiles), strided diffusers-style views."""
    layouts = small_layerflow_layouts(text_tokens=226, tokens_per_clip=300)
    layouts["per-layer"] = SegmentLayout.block_diagonal([3 * 226] + [300] * 4)
    layout = layouts[name]
    q, k, v = qkv(layout, 1, 2, head_dim, dtype, 6, strided=True)
    check_against_reference(layout, q, k, v, "triton", "cuda")


def test_tile_lists_reach_the_device_once():
    layout = conditional_layout(3, 4, 250, condition_clips=(0,), text_tokens=100)
    q, k, v = (x.detach().cuda().requires_grad_() for x in qkv(layout, 1, 2, 64, torch.float16, 2))
    copies = []
    original = TileLists.to

    def counting(self, device):
        copies.append(str(device))
        return original(self, device)

    TileLists.to = counting  # type: ignore[method-assign]
    try:
        for _ in range(3):
            layer_attention(q, k, v, layout, backend="triton").sum().backward()
    finally:
        TileLists.to = original  # type: ignore[method-assign]
    assert copies == ["cuda:0"] or copies == ["cuda"]


def test_auto_on_this_device_is_explained_and_exact():
    layout = conditional_layout(3, 4, 300, condition_clips=(0,), text_tokens=226)
    q, k, v = qkv(layout, 1, 2, 64, torch.bfloat16, 3, strided=True)
    q, k, v = (x.detach().cuda() for x in (q, k, v))
    name = select_backend(q, layout=layout)
    reasons = backend_reasons(q, layout, auto=True)
    assert reasons[name] == [] and all(reasons[other] for other in reasons if other != name)
    torch.testing.assert_close(
        layer_attention(q, k, v, layout),
        layer_attention(q, k, v, layout, backend="sdpa"),
        atol=2e-2,
        rtol=2e-2,
    )
    # at the shape on this device: SDPA unless the packaged table measured something faster here
    full = layerflow_layout(3, 4, 5400)
    call = AttentionCall.of(torch.empty(1, 30, full.seq_len, 64, device="cuda", dtype=torch.bfloat16), full)
    choice = explain_auto(call)
    if call.device_name not in packaged_table().devices:
        assert choice.backend == "sdpa"
