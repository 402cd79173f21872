"""Every CPU backend against the dense-mask reference: outputs and dQ/dK/dV."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from layer_attention import SegmentLayout, layer_attention, reference_attention
from layer_attention.testing import qkv, random_layout, small_layerflow_layouts

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=3e-3, rtol=3e-3)}


def _check_against_reference(layout: SegmentLayout, backend: str, q, k, v, dtype: torch.dtype) -> None:
    out = layer_attention(q, k, v, layout, backend=backend)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    got = torch.autograd.grad(out, (q, k, v), grad)
    # the oracle in fp64 from the same inputs, so low-precision backends are judged against exact math
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference_attention(q64, k64, v64, layout, q.shape[-1] ** -0.5)
    want = torch.autograd.grad(ref, (q64, k64, v64), grad.double())
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    for name, g, w in zip("qkv", got, want):
        torch.testing.assert_close(g.double(), w, **TOL[dtype], msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("seed", range(12))
def test_sdpa_matches_reference_on_random_layouts(seed):
    layout = random_layout(torch.Generator().manual_seed(seed))
    q, k, v = qkv(layout, 2, 3, 16, torch.float32, seed, strided=seed % 2 == 1)
    _check_against_reference(layout, "sdpa", q, k, v, torch.float32)


@pytest.mark.parametrize("name", ["3 prompts + 4 clips", "2 prompts + 4 clips", "conditional"])
def test_sdpa_matches_reference_on_layerflow_layouts(name):
    layout = small_layerflow_layouts(text_tokens=226, tokens_per_clip=75)[name]
    q, k, v = qkv(layout, 1, 2, 32, torch.float32, 3, strided=True)
    _check_against_reference(layout, "sdpa", q, k, v, torch.float32)


class _RecordSDPA(TorchFunctionMode):
    """Records every scaled_dot_product_attention call (observes, patches nothing)."""

    def __init__(self):
        super().__init__()
        self.calls: list[dict] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.calls.append({"mask": kwargs.get("attn_mask"), "q": args[0].shape, "k": args[1].shape})
        return func(*args, **kwargs)


def test_sdpa_never_builds_a_mask():
    """Full layouts: one unmasked call. Masked: one unmasked call per query group on gathered keys."""
    layout = small_layerflow_layouts(text_tokens=30, tokens_per_clip=50)["conditional"]
    q, k, v = qkv(layout, 1, 2, 32, torch.float32, 0)
    with _RecordSDPA() as record:
        masked = layer_attention(q, k, v, layout, backend="sdpa")
    assert len(record.calls) == len(layout.query_groups) == 2
    assert all(call["mask"] is None for call in record.calls)
    assert sorted(call["k"][2] for call in record.calls) == [3 * 30 + 50, layout.seq_len]
    with _RecordSDPA() as record:
        full = layer_attention(q, k, v, SegmentLayout([layout.seq_len]), backend="sdpa")
    assert [call["mask"] for call in record.calls] == [None]
    scale = q.shape[-1] ** -0.5
    torch.testing.assert_close(masked, reference_attention(q, k, v, layout, scale), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, reference_attention(q, k, v, SegmentLayout([layout.seq_len]), scale))


def test_explicit_scale_is_used():
    layout = SegmentLayout([20, 30], [[True, False], [True, True]])
    q, k, v = qkv(layout, 1, 2, 16, torch.float32, 1)
    out = layer_attention(q, k, v, layout, scale=0.3, backend="sdpa")
    torch.testing.assert_close(out, reference_attention(q, k, v, layout, 0.3))
    assert not torch.allclose(out, layer_attention(q, k, v, layout, backend="sdpa"))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_block_mask_matches_reference():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    layout = small_layerflow_layouts(text_tokens=27, tokens_per_clip=40)["conditional"]
    q, k, v = (x.detach() for x in qkv(layout, 1, 2, 16, torch.float32, 5))
    out = flex.flex_attention(q, k, v, block_mask=layout.to_block_mask(block_size=16))
    torch.testing.assert_close(out, reference_attention(q, k, v, layout, 0.25), atol=1e-5, rtol=1e-5)
