"""Test helpers: random and LayerFlow-shaped layouts, seeded q/k/v (used by the tests and the benchmark)."""

from __future__ import annotations

import torch

from layer_attention import (
    SegmentLayout,
    conditional_layout,
    layer_attention,
    layerflow_layout,
    reference_attention,
)

#: atol = rtol against the float64 reference, per input dtype (fp32 accumulation in every kernel).
TOLERANCES = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def random_layout(generator: torch.Generator, max_segments: int = 6, max_len: int = 60) -> SegmentLayout:
    """1-6 ragged segments and a random allowed table (every row keeps at least one True)."""
    count = int(torch.randint(1, max_segments + 1, (1,), generator=generator))
    lengths = torch.randint(1, max_len + 1, (count,), generator=generator).tolist()
    allowed = torch.rand(count, count, generator=generator) < 0.55
    for row in range(count):
        if not allowed[row].any():
            allowed[row, int(torch.randint(0, count, (1,), generator=generator))] = True
    return SegmentLayout(lengths, allowed)


def small_layerflow_layouts(text_tokens: int, tokens_per_clip: int) -> dict[str, SegmentLayout]:
    """The issue's LayerFlow layouts with small token counts."""
    return {
        "3 prompts + 4 clips": layerflow_layout(3, 4, tokens_per_clip, text_tokens=text_tokens),
        "2 prompts + 4 clips": layerflow_layout(2, 4, tokens_per_clip, text_tokens=text_tokens),
        "conditional": conditional_layout(
            3, 4, tokens_per_clip, condition_clips=(1,), text_tokens=text_tokens
        ),
    }


def qkv(
    layout: SegmentLayout,
    batch: int,
    heads: int,
    head_dim: int,
    dtype: torch.dtype,
    seed: int,
    strided: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Leaf q, k, v ``[B, H, N, D]``; ``strided`` gives diffusers-style transposed views of [B, N, H, D]."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, layout.seq_len, heads, head_dim) if strided else (batch, heads, layout.seq_len, head_dim)
    out = []
    for _ in range(3):
        x = torch.randn(shape, generator=generator).to(dtype)
        x = x.transpose(1, 2) if strided else x
        out.append(x.requires_grad_())
    return out[0], out[1], out[2]


def check_against_reference(
    layout: SegmentLayout,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    backend: str,
    device: torch.device | str,
) -> None:
    """Output and dQ, dK, dV of ``backend`` on ``device`` equal the float64 reference (dtype tolerances)."""
    dtype = q.dtype
    q, k, v = (x.detach().to(device).requires_grad_() for x in (q, k, v))
    out = layer_attention(q, k, v, layout, backend=backend)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(11)).to(dtype).to(device)
    got = torch.autograd.grad(out, (q, k, v), grad)
    q64, k64, v64 = (x.detach().cpu().double().requires_grad_() for x in (q, k, v))
    ref = reference_attention(q64, k64, v64, layout, q.shape[-1] ** -0.5)
    want = torch.autograd.grad(ref, (q64, k64, v64), grad.cpu().double())
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(out.detach().cpu().double(), ref.detach(), atol=tol, rtol=tol)
    for name, g, w in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(g.cpu().double(), w, atol=tol, rtol=tol, msg=f"d{name} differs")
