"""The Triton kernel (interpreter on CPU) against the dense-mask reference, forward and backward.

Sizes stay in the low hundreds of tokens: the interpreter runs every program instance in numpy.
"""

from __future__ import annotations

import pytest
import torch

from layer_attention import SegmentLayout, backend_reasons, layer_attention
from layer_attention.testing import check_against_reference, qkv, random_layout, small_layerflow_layouts

pytest.importorskip("triton")
if backend_reasons(torch.empty(1, 1, 1, 32))["triton"] and not torch.cuda.is_available():
    pytest.skip("Triton can run neither on CUDA nor in its interpreter here", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _check(layout: SegmentLayout, q, k, v, dtype: torch.dtype) -> None:
    assert q.dtype == dtype
    check_against_reference(layout, q, k, v, "triton", DEVICE)


@pytest.mark.parametrize("seed", range(5))
def test_random_layouts_fp32(seed):
    """Ragged lengths, 1-6 segments, random tables: boundaries fall inside tiles, N % block != 0."""
    layout = random_layout(torch.Generator().manual_seed(100 + seed), max_len=40)
    q, k, v = qkv(layout, 1, 1, 32, torch.float32, seed, strided=seed % 2 == 0)
    _check(layout, q, k, v, torch.float32)


@pytest.mark.parametrize("name", ["3 prompts + 4 clips", "2 prompts + 4 clips", "conditional"])
def test_layerflow_layouts_fp32(name):
    layout = small_layerflow_layouts(text_tokens=13, tokens_per_clip=29)[name]
    q, k, v = qkv(layout, 1, 1, 32, torch.float32, 1, strided=True)
    _check(layout, q, k, v, torch.float32)


@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_head_dims(head_dim):
    layout = SegmentLayout([40, 61, 30], [[1, 0, 1], [1, 1, 0], [0, 1, 1]])
    q, k, v = qkv(layout, 1, 1, head_dim, torch.float32, head_dim)
    _check(layout, q, k, v, torch.float32)


@pytest.mark.parametrize(
    "layout",
    [SegmentLayout([100]), SegmentLayout.block_diagonal([50, 39, 33])],
    ids=["full", "block-diagonal"],
)
def test_fp16_full_and_block_diagonal(layout):
    q, k, v = qkv(layout, 1, 1, 32, torch.float16, 4, strided=True)
    _check(layout, q, k, v, torch.float16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton interpreter cannot compute in bfloat16")
def test_bf16_on_cuda():
    layout = small_layerflow_layouts(text_tokens=226, tokens_per_clip=300)["conditional"]
    q, k, v = qkv(layout, 1, 2, 64, torch.bfloat16, 6, strided=True)
    _check(layout, q, k, v, torch.bfloat16)


def test_tile_sparsity_reaches_the_kernel():
    """A key segment nobody may read gets exactly zero gradient and cannot change the output."""
    layout = SegmentLayout([64, 64, 40], [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    q, k, v = qkv(layout, 2, 1, 32, torch.float32, 9)  # B = 2: per-batch offsets
    out = layer_attention(q, k, v, layout, backend="triton")
    (dk,) = torch.autograd.grad(out[:, :, :128].sum(), (k,))
    assert torch.count_nonzero(dk[:, :, 128:]) == 0
    k2 = k.detach().clone()
    k2[:, :, 64:128] += 1e3  # segment 1 keys are visible only to segment 1 queries
    out2 = layer_attention(q.detach(), k2, v.detach(), layout, backend="triton")
    torch.testing.assert_close(out2[:, :, :64], out.detach()[:, :, :64])
    torch.testing.assert_close(out2[:, :, 128:], out.detach()[:, :, 128:])
