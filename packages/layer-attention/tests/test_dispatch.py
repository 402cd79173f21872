"""Backend declarations, the dispatcher's choices and its explanations, input validation."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from layer_attention import (
    BACKENDS,
    BackendNotSupportedError,
    SegmentLayout,
    backend_reasons,
    layer_attention,
    reference_attention,
    select_backend,
)
from layer_attention.backends import XFormersBackend
from layer_attention.testing import qkv

LAYOUT = SegmentLayout([10, 6], [[True, False], [True, True]])


def _q(dtype=torch.float32, head_dim=32):
    return torch.zeros(1, 2, LAYOUT.seq_len, head_dim, dtype=dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU dispatch")
def test_auto_picks_sdpa_on_cpu_and_reference_is_never_automatic():
    assert select_backend(_q()) == "sdpa"
    assert select_backend(_q(), "reference") == "reference"
    assert BACKENDS["reference"].auto_reasons(_q())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU dispatch")
def test_requested_xformers_raises_with_its_reasons():
    with pytest.raises(BackendNotSupportedError) as info:
        select_backend(_q(), "xformers")
    message = str(info.value)
    assert "backend 'xformers' cannot run torch.float32 inputs of shape (1, 2, 16, 32) on cpu" in message
    assert "needs CUDA (tensors are on cpu)" in message
    if "xformers" not in sys.modules:
        assert "not importable (xformers.ops" in message
    with pytest.raises(BackendNotSupportedError, match="needs CUDA"):
        layer_attention(_q(), _q(), _q(), LAYOUT, backend="xformers")  # raises, never falls back


def test_auto_lists_every_rejected_backend():
    q = _q(dtype=torch.int32)
    with pytest.raises(BackendNotSupportedError) as info:
        select_backend(q)
    lines = str(info.value).splitlines()
    assert lines[0] == "no backend can run torch.int32 inputs of shape (1, 2, 16, 32) on cpu:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["triton", "xformers", "sdpa"]
    assert all("dtype torch.int32 not in" in line for line in lines[1:])


def test_triton_declares_head_dims_and_interpreter_limits():
    reasons = backend_reasons(_q(head_dim=48))["triton"]
    assert "head dim 48 not in [16, 32, 64, 128]" in reasons
    triton_backend = BACKENDS["triton"]
    if not torch.cuda.is_available() and triton_backend.interpreted():  # type: ignore[attr-defined]
        assert (
            "the Triton interpreter (TRITON_INTERPRET=1) cannot compute in bfloat16"
            in backend_reasons(_q(dtype=torch.bfloat16))["triton"]
        )
        assert select_backend(_q(), "triton") == "triton"  # runs on CPU only when requested by name
        assert any("auto picks it only for ['cuda']" in r for r in triton_backend.auto_reasons(_q()))


def test_unknown_backend_name():
    with pytest.raises(
        ValueError,
        match=r"unknown backend 'flash'; choose 'auto' or one of \['reference', 'sdpa', 'triton', 'xformers'\]",
    ):
        select_backend(_q(), "flash")


@pytest.mark.parametrize(
    ("q", "k", "layout", "scale", "match"),
    [
        (
            torch.zeros(2, 16, 8),
            torch.zeros(2, 16, 8),
            LAYOUT,
            None,
            r"q must be \[B, H, N, D\], got shape \(2, 16, 8\)",
        ),
        (_q(), torch.zeros(1, 2, 17, 32), LAYOUT, None, "same"),
        (_q(), _q(dtype=torch.float64), LAYOUT, None, "share a dtype"),
        (
            torch.zeros(1, 2, 15, 32),
            torch.zeros(1, 2, 15, 32),
            LAYOUT,
            None,
            r"N=15 does not match the layout's 16 tokens \(segments \[10, 6\]\)",
        ),
        (_q(), _q(), LAYOUT, -1.0, "scale must be a positive finite number"),
        (_q(), _q(), [10, 6], None, "layout must be a SegmentLayout"),
    ],
)
def test_bad_inputs_fail_before_compute(q, k, layout, scale, match):
    with pytest.raises((ValueError, TypeError), match=match):
        layer_attention(q, k, k, layout, scale=scale)


class _FakeBlockDiagonalMask:
    def __init__(self, seqlens):
        self.seqlens = seqlens

    @classmethod
    def from_seqlens(cls, seqlens):
        return cls(list(seqlens))


def _fake_memory_efficient_attention(q, k, v, attn_bias=None, scale=None):
    """xformers semantics in [B, M, H, K]; block-diagonal bias materialised by hand."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    mask = None
    if attn_bias is not None:
        mask = SegmentLayout.block_diagonal(attn_bias.seqlens).dense_mask()
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


@pytest.fixture
def fake_xformers(monkeypatch):
    """A stand-in ``xformers.ops`` (the real one needs CUDA) to check our layout plumbing on CPU."""
    fmha = types.ModuleType("xformers.ops.fmha")
    fmha.memory_efficient_attention = _fake_memory_efficient_attention
    fmha.attn_bias = types.SimpleNamespace(BlockDiagonalMask=_FakeBlockDiagonalMask)
    ops = types.ModuleType("xformers.ops")
    ops.fmha = fmha
    package = types.ModuleType("xformers")
    package.ops = ops
    for name, module in (("xformers", package), ("xformers.ops", ops), ("xformers.ops.fmha", fmha)):
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize(
    "layout",
    [
        SegmentLayout([40]),
        SegmentLayout.block_diagonal([17, 30, 9]),
        SegmentLayout([12, 20, 25], [[1, 0, 1], [1, 1, 1], [1, 0, 1]]),
    ],
    ids=["full", "block-diagonal", "grouped"],
)
def test_xformers_paths_match_reference(fake_xformers, layout):
    q, k, v = qkv(layout, 2, 2, 16, torch.float32, 2, strided=True)
    out = XFormersBackend().attention(q, k, v, layout, 0.25)
    torch.testing.assert_close(out, reference_attention(q, k, v, layout, 0.25), atol=1e-5, rtol=1e-5)
