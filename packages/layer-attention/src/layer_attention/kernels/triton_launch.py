"""Host launchers for the Triton kernels: allocation, tile lists on device, grids.

The tile lists come from the layout's device cache (built and copied once per layout and device);
the grids are ``(B x H, programs in work order)``.

Inputs may be arbitrary strided ``[B, H, N, D]`` views (diffusers hands over transposed views of
``[B, N, H, D]`` buffers); strides go to the kernels as they are, nothing is copied. Outputs
(O, dQ, dK, dV) are allocated contiguous.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton

from layer_attention.layout import SegmentLayout

from .triton_kernels import (
    LOG2E,
    SPARSE_BLOCK,
    attention_bwd_delta_kernel,
    attention_bwd_dkdv_kernel,
    attention_bwd_dq_kernel,
    attention_fwd_kernel,
)

#: Head dims the kernels are built for (``tl.dot`` needs >= 16, ``tl.arange`` a power of two).
HEAD_DIMS = frozenset({16, 32, 64, 128})


def _input_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get full-precision dots (they are the accuracy path); half types ignore this."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _grid(heads: int, num_tiles: int, block: str) -> Callable[[dict[str, int]], tuple[int, int]]:
    """Axis 0: batch x head; axis 1: every kernel tile of every sparse tile, in the layout's work order."""

    def grid(meta: dict[str, int]) -> tuple[int, int]:
        return (heads, num_tiles * (SPARSE_BLOCK // meta[block]))

    return grid


def _check(q: torch.Tensor, layout: SegmentLayout) -> None:
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"Triton layer attention supports head dims {sorted(HEAD_DIMS)}, got {q.shape[-1]}")
    if q.shape[2] != layout.seq_len:
        raise ValueError(f"sequence length {q.shape[2]} does not match layout length {layout.seq_len}")


def triton_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the output ``[B, H, N, D]`` (q's dtype) and the log2-domain LSE ``[B, H, N]`` (fp32)."""
    _check(q, layout)
    batch, heads, seq_len, head_dim = q.shape
    out = torch.empty((batch, heads, seq_len, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=q.device)
    tiles = layout.device_tiles(SPARSE_BLOCK, q.device)

    attention_fwd_kernel[_grid(batch * heads, tiles.num_tiles, "BLOCK_M")](
        q, k, v, out, lse,
        layout.segment_ids(q.device), layout.allowed_table(q.device), tiles.q_order,
        tiles.kv_full.run_offsets, tiles.kv_full.run_starts, tiles.kv_full.run_ends,
        tiles.kv_partial.offsets, tiles.kv_partial.indices,
        *q.stride(), *k.stride(), *v.stride(), *out.stride()[:3],
        heads, seq_len, layout.num_segments, scale * LOG2E,
        HEAD_DIM=head_dim, SPARSE_BLOCK=SPARSE_BLOCK, INPUT_PRECISION=_input_precision(q.dtype),
    )  # fmt: skip
    return out, lse


def triton_attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    layout: SegmentLayout,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV for the forward above (two kernels, no atomics)."""
    batch, heads, seq_len, head_dim = q.shape
    tiles = layout.device_tiles(SPARSE_BLOCK, q.device)
    seg, allowed = layout.segment_ids(q.device), layout.allowed_table(q.device)
    precision = _input_precision(q.dtype)

    delta = torch.empty_like(lse)
    delta_block = 64
    attention_bwd_delta_kernel[(triton.cdiv(seq_len, delta_block), batch * heads)](
        out, grad_out, delta, *out.stride()[:3], *grad_out.stride(), heads, seq_len,
        HEAD_DIM=head_dim, BLOCK_M=delta_block,
    )  # fmt: skip

    dq = torch.empty((batch, heads, seq_len, head_dim), dtype=q.dtype, device=q.device)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    common = (
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dq.stride()[:3],
        heads, seq_len, layout.num_segments, scale * LOG2E, scale,
    )  # fmt: skip

    attention_bwd_dkdv_kernel[_grid(batch * heads, tiles.num_tiles, "BLOCK_N")](
        q, k, v, grad_out, lse, delta, dk, dv, seg, allowed, tiles.kv_order,
        tiles.q_full.run_offsets, tiles.q_full.run_starts, tiles.q_full.run_ends,
        tiles.q_partial.offsets, tiles.q_partial.indices,
        *common, HEAD_DIM=head_dim, SPARSE_BLOCK=SPARSE_BLOCK, INPUT_PRECISION=precision,
    )  # fmt: skip

    attention_bwd_dq_kernel[_grid(batch * heads, tiles.num_tiles, "BLOCK_M")](
        q, k, v, grad_out, lse, delta, dq, seg, allowed, tiles.q_order,
        tiles.kv_full.run_offsets, tiles.kv_full.run_starts, tiles.kv_full.run_ends,
        tiles.kv_partial.offsets, tiles.kv_partial.indices,
        *common, HEAD_DIM=head_dim, SPARSE_BLOCK=SPARSE_BLOCK, INPUT_PRECISION=precision,
    )  # fmt: skip
    return dq, dk, dv
