# mypy: disallow-untyped-defs=False
# (Triton reads parameter annotations of @triton.jit functions as specialisation hints, so the
# kernels below stay unannotated; the typed surface is the launcher module.)
"""Triton kernels: block-sparse FlashAttention-2 forward and an atomics-free backward.

Every program walks the tile lists of a :class:`~layer_attention.layout.TileLists` built for
``SPARSE_BLOCK``-token tiles, all on the device (no per-tile host metadata): full tiles as runs of
consecutive tiles (an affine inner loop without mask arithmetic, which Triton pipelines), then
partial tiles (segment boundary or ragged tail inside) by index, with a per-element mask looked up
from the segment ids and the S x S allowed table. Skipped tiles are never loaded. Kernel tiles
(``BLOCK_M`` x ``BLOCK_N``) divide ``SPARSE_BLOCK`` so tuning never changes the tile lists.

Programs are launched in work order: grid axis 0 is batch x head, axis 1 walks the layout's
``q_order`` / ``kv_order`` (tiles by decreasing number of visited tiles), so the longest rows
start first on every head and short rows fill the tail of the launch.

Softmax runs in base 2 with the scale folded in (``qk_scale = scale * log2(e)``, one multiply per
score, ``exp2``); the forward saves the log2-domain log-sum-exp per row. The backward is two
kernels, dK/dV per key tile (walking the transposed lists) and dQ per query tile, so no program
writes another program's rows: no atomics.

Configs: one small config under the interpreter; on GPUs an autotuned search space pruned per head
dim, or with ``LAYER_ATTENTION_AUTOTUNE=0`` one fixed config per kernel and head dim (Hopper
starting points from FlexAttention's defaults), which compiles once and never benchmarks (tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import triton
import triton.language as tl

#: ``@triton.jit`` picks interpreter or compiled mode at decoration time, so the mode is fixed here.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

#: Token size of the tiles the layout's tile lists are computed for.
SPARSE_BLOCK = 64 if INTERPRETED else 128

LOG2E = 1.4426950408889634


#: ``LAYER_ATTENTION_AUTOTUNE=0``: one fixed config per kernel and head dim, no benchmarking.
AUTOTUNE = os.environ.get("LAYER_ATTENTION_AUTOTUNE", "1").lower() not in ("0", "false", "off", "no")

#: Fixed configs (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel and head dim: FlexAttention's
#: H100 defaults (forward (128, 128, 4, 3) at D <= 64; backward (64, 64, 4, 3) at D <= 64 and
#: (64, 128, 8, 3) at D = 128), adjusted to each kernel's loop structure.
DEFAULT_CONFIGS: dict[str, dict[int, tuple[int, int, int, int]]] = {
    "fwd": {16: (128, 128, 4, 3), 32: (128, 128, 4, 3), 64: (128, 128, 4, 3), 128: (128, 64, 8, 3)},
    "dkdv": {16: (64, 128, 4, 3), 32: (64, 128, 4, 3), 64: (64, 64, 4, 3), 128: (64, 128, 8, 3)},
    "dq": {16: (128, 64, 4, 3), 32: (128, 64, 4, 3), 64: (64, 64, 4, 3), 128: (128, 64, 8, 3)},
}


def _configs(kernel: str, block_m: tuple[int, ...], block_n: tuple[int, ...]) -> list[triton.Config]:
    """The search space of ``kernel`` (defaults included); a single small config under the interpreter."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    space = {(bm, bn, w, st) for bm in block_m for bn in block_n for w in (4, 8) for st in (2, 3, 4)}
    space |= set(DEFAULT_CONFIGS[kernel].values())
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
        for bm, bn, w, st in sorted(space)
    ]


def _pruner(kernel: str) -> Callable[..., list[triton.Config]]:
    def prune(configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any) -> list[triton.Config]:
        """Tiles must divide the sparse block; per head dim: no 8 warps on small tiles, no 128 x 128
        tiles at D = 128 (shared memory); without autotuning, the fixed config of this head dim."""
        sparse = kwargs.get("SPARSE_BLOCK", named_args.get("SPARSE_BLOCK", SPARSE_BLOCK))
        head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
        if len(configs) == 1:
            return configs
        if not AUTOTUNE and head_dim in DEFAULT_CONFIGS[kernel]:
            bm, bn, w, st = DEFAULT_CONFIGS[kernel][head_dim]
            fixed = [
                c
                for c in configs
                if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) == (bm, bn, w, st)
            ]
            return fixed[:1] or configs[:1]
        kept = [
            c
            for c in configs
            if sparse % c.kwargs["BLOCK_M"] == 0
            and sparse % c.kwargs["BLOCK_N"] == 0
            and not (c.num_warps == 8 and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] < 128 * 128)
            and not (
                head_dim is not None
                and head_dim >= 128
                and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > 128 * 64
            )
        ]
        return kept or configs[:1]

    return prune


_AUTOTUNE_KEY = ["N_CTX", "HEAD_DIM", "SPARSE_BLOCK"]


@triton.jit
def _load_rows(head, rows, stride_n, stride_d, N_CTX, HEAD_DIM: tl.constexpr):
    """[len(rows), HEAD_DIM] tile of one head's [N, D] matrix; rows past N_CTX read as zeros."""
    offs_d = tl.arange(0, HEAD_DIM)
    return tl.load(
        head + rows[:, None] * stride_n + offs_d[None, :] * stride_d, mask=(rows < N_CTX)[:, None], other=0.0
    )


@triton.jit
def _segment_mask(SEG, ALLOWED, NUM_SEGMENTS, seg_q, cols, N_CTX):
    """[BLOCK_M, BLOCK_N] bool: the query row's segment may attend the key column's, column in range."""
    col_ok = cols < N_CTX
    seg_k = tl.load(SEG + cols, mask=col_ok, other=0)
    ok = tl.load(ALLOWED + seg_q[:, None] * NUM_SEGMENTS + seg_k[None, :]) != 0
    return ok & col_ok[None, :]


@triton.jit
def _fwd_tile(
    acc, m_i, l_i, q, seg_q, K_head, V_head, start_n, SEG, ALLOWED, NUM_SEGMENTS, N_CTX, qk_scale,
    stride_kn, stride_kd, stride_vn, stride_vd,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PARTIAL: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_ptrs = K_head + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_ptrs = V_head + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd
    if PARTIAL:
        col_ok = cols < N_CTX
        kT = tl.load(k_ptrs, mask=col_ok[None, :], other=0.0)
        v = tl.load(v_ptrs, mask=col_ok[:, None], other=0.0)
    else:
        kT = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    qk = tl.dot(q, kT, input_precision=INPUT_PRECISION) * qk_scale
    if PARTIAL:
        qk = tl.where(_segment_mask(SEG, ALLOWED, NUM_SEGMENTS, seg_q, cols, N_CTX), qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    if PARTIAL:
        # a row may have no allowed key yet: keep exp2 away from (-inf) - (-inf); the running max
        # itself stays -inf so later tiles rescale from scratch
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_ref = m_new
    p = tl.math.exp2(qk - m_ref[:, None])
    alpha = tl.math.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _ordered_program(ORDER, N_CTX, BLOCK: tl.constexpr, SPARSE_BLOCK: tl.constexpr):
    """(batch x head, sparse tile, first token) of this program: axis 1 walks ``ORDER`` (heaviest first)."""
    subs: tl.constexpr = SPARSE_BLOCK // BLOCK
    pid = tl.program_id(1)
    tile = tl.load(ORDER + pid // subs)
    return tl.program_id(0), tile, tile * SPARSE_BLOCK + (pid % subs) * BLOCK


@triton.jit
def _row_range(OFFSETS, tile, start, N_CTX):
    """``[lo, hi)`` of ``tile``'s row in a CSR array; empty for programs past the end of the sequence."""
    lo = tl.load(OFFSETS + tile)
    hi = tl.load(OFFSETS + tile + 1)
    return lo, tl.where(start < N_CTX, hi, lo)


@triton.autotune(
    configs=_configs("fwd", (64, 128), (64, 128)),
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _pruner("fwd")},
)
@triton.jit
def attention_fwd_kernel(
    Q, K, V, OUT, LSE, SEG, ALLOWED, Q_ORDER,
    KV_RUN_OFFSETS, KV_RUN_STARTS, KV_RUN_ENDS, KV_PART_OFFSETS, KV_PART_INDICES,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on,
    H, N_CTX, NUM_SEGMENTS, qk_scale,
    HEAD_DIM: tl.constexpr, SPARSE_BLOCK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    bh, tile, start_m = _ordered_program(Q_ORDER, N_CTX, BLOCK_M, SPARSE_BLOCK)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < N_CTX
    q = _load_rows(Q + b * stride_qb + h * stride_qh, rows, stride_qn, stride_qd, N_CTX, HEAD_DIM)
    seg_q = tl.load(SEG + rows, mask=row_ok, other=0)
    K_head = K + b * stride_kb + h * stride_kh
    V_head = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # full tiles first, run by run: after one of them every row has a finite running max
    lo, hi = _row_range(KV_RUN_OFFSETS, tile, start_m, N_CTX)
    for r in range(lo, hi):
        run_start = tl.load(KV_RUN_STARTS + r) * SPARSE_BLOCK
        run_end = tl.load(KV_RUN_ENDS + r) * SPARSE_BLOCK
        for start_n in range(run_start, run_end, BLOCK_N):
            acc, m_i, l_i = _fwd_tile(
                acc, m_i, l_i, q, seg_q, K_head, V_head, start_n, SEG, ALLOWED, NUM_SEGMENTS, N_CTX,
                qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, HEAD_DIM, BLOCK_N, False, INPUT_PRECISION,
            )  # fmt: skip
    lo, hi = _row_range(KV_PART_OFFSETS, tile, start_m, N_CTX)
    for i in range(lo, hi):
        kv_start = tl.load(KV_PART_INDICES + i) * SPARSE_BLOCK
        for sub in tl.static_range(0, SPARSE_BLOCK, BLOCK_N):
            acc, m_i, l_i = _fwd_tile(
                acc, m_i, l_i, q, seg_q, K_head, V_head, kv_start + sub, SEG, ALLOWED, NUM_SEGMENTS, N_CTX,
                qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, HEAD_DIM, BLOCK_N, True, INPUT_PRECISION,
            )  # fmt: skip

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # only padded rows past N_CTX can have l == 0
    out = acc / l_safe[:, None]
    tl.store(
        OUT + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + offs_d[None, :],
        out.to(OUT.dtype.element_ty),
        mask=row_ok[:, None],
    )
    tl.store(LSE + bh.to(tl.int64) * N_CTX + rows, m_i + tl.math.log2(l_safe), mask=row_ok)


@triton.jit
def attention_bwd_delta_kernel(
    OUT, DO, DELTA,
    stride_ob, stride_oh, stride_on,
    stride_dob, stride_doh, stride_don, stride_dod,
    H, N_CTX, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """delta = rowsum(O * dO), the softmax-gradient correction term."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    row_ok = rows < N_CTX
    o = _load_rows(OUT + b * stride_ob + h * stride_oh, rows, stride_on, 1, N_CTX, HEAD_DIM).to(tl.float32)
    do = _load_rows(DO + b * stride_dob + h * stride_doh, rows, stride_don, stride_dod, N_CTX, HEAD_DIM).to(
        tl.float32
    )
    tl.store(DELTA + bh.to(tl.int64) * N_CTX + rows, tl.sum(o * do, 1), mask=row_ok)


@triton.jit
def _dkdv_tile(
    dk, dv, k, v, seg_k, cols, Q_head, DO_head, LSE_head, DELTA_head, start_m, SEG, ALLOWED, NUM_SEGMENTS,
    N_CTX, qk_scale, stride_qn, stride_qd, stride_don, stride_dod,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, PARTIAL: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < N_CTX  # the query tail is not special in the tile lists; padded rows load zeros
    qT = tl.load(
        Q_head + rows[None, :] * stride_qn + offs_d[:, None] * stride_qd, mask=row_ok[None, :], other=0.0
    )
    do = _load_rows(DO_head, rows, stride_don, stride_dod, N_CTX, HEAD_DIM)
    lse = tl.load(LSE_head + rows, mask=row_ok, other=0.0)
    delta = tl.load(DELTA_head + rows, mask=row_ok, other=0.0)
    pT = tl.math.exp2(tl.dot(k, qT, input_precision=INPUT_PRECISION) * qk_scale - lse[None, :])
    if PARTIAL:
        seg_q = tl.load(SEG + rows, mask=row_ok, other=0)
        ok = tl.load(ALLOWED + seg_q[None, :] * NUM_SEGMENTS + seg_k[:, None]) != 0
        ok = ok & (cols < N_CTX)[:, None] & row_ok[None, :]
        pT = tl.where(ok, pT, 0.0)
    dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=INPUT_PRECISION)
    dpT = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)
    dsT = pT * (dpT - delta[None, :])
    dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=INPUT_PRECISION)
    return dk, dv


@triton.autotune(
    configs=_configs("dkdv", (32, 64), (64, 128)),
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _pruner("dkdv")},
)
@triton.jit
def attention_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, SEG, ALLOWED, KV_ORDER,
    Q_RUN_OFFSETS, Q_RUN_STARTS, Q_RUN_ENDS, Q_PART_OFFSETS, Q_PART_INDICES,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_gb, stride_gh, stride_gn,
    H, N_CTX, NUM_SEGMENTS, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, SPARSE_BLOCK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dK and dV of one key tile (``BLOCK_N`` keys), over the query tiles that may attend it."""
    bh, tile, start_n = _ordered_program(KV_ORDER, N_CTX, BLOCK_N, SPARSE_BLOCK)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = cols < N_CTX
    k = _load_rows(K + b * stride_kb + h * stride_kh, cols, stride_kn, stride_kd, N_CTX, HEAD_DIM)
    v = _load_rows(V + b * stride_vb + h * stride_vh, cols, stride_vn, stride_vd, N_CTX, HEAD_DIM)
    seg_k = tl.load(SEG + cols, mask=col_ok, other=0)
    Q_head = Q + b * stride_qb + h * stride_qh
    DO_head = DO + b * stride_dob + h * stride_doh
    LSE_head = LSE + bh.to(tl.int64) * N_CTX
    DELTA_head = DELTA + bh.to(tl.int64) * N_CTX

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    lo, hi = _row_range(Q_RUN_OFFSETS, tile, start_n, N_CTX)
    for r in range(lo, hi):
        run_start = tl.load(Q_RUN_STARTS + r) * SPARSE_BLOCK
        run_end = tl.load(Q_RUN_ENDS + r) * SPARSE_BLOCK
        for start_m in range(run_start, run_end, BLOCK_M):
            dk, dv = _dkdv_tile(
                dk, dv, k, v, seg_k, cols, Q_head, DO_head, LSE_head, DELTA_head, start_m, SEG, ALLOWED,
                NUM_SEGMENTS, N_CTX, qk_scale, stride_qn, stride_qd, stride_don, stride_dod,
                HEAD_DIM, BLOCK_M, False, INPUT_PRECISION,
            )  # fmt: skip
    lo, hi = _row_range(Q_PART_OFFSETS, tile, start_n, N_CTX)
    for i in range(lo, hi):
        q_start = tl.load(Q_PART_INDICES + i) * SPARSE_BLOCK
        for sub in tl.static_range(0, SPARSE_BLOCK, BLOCK_M):
            dk, dv = _dkdv_tile(
                dk, dv, k, v, seg_k, cols, Q_head, DO_head, LSE_head, DELTA_head, q_start + sub, SEG, ALLOWED,
                NUM_SEGMENTS, N_CTX, qk_scale, stride_qn, stride_qd, stride_don, stride_dod,
                HEAD_DIM, BLOCK_M, True, INPUT_PRECISION,
            )  # fmt: skip

    out_offsets = b * stride_gb + h * stride_gh + cols[:, None] * stride_gn + offs_d[None, :]
    tl.store(DK + out_offsets, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + out_offsets, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _dq_tile(
    dq, q, do, lse, delta, seg_q, K_head, V_head, start_n, SEG, ALLOWED, NUM_SEGMENTS, N_CTX, qk_scale,
    stride_kn, stride_kd, stride_vn, stride_vd,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PARTIAL: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_ptrs = K_head + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_ptrs = V_head + cols[None, :] * stride_vn + offs_d[:, None] * stride_vd
    if PARTIAL:
        col_ok = cols < N_CTX
        kT = tl.load(k_ptrs, mask=col_ok[None, :], other=0.0)
        vT = tl.load(v_ptrs, mask=col_ok[None, :], other=0.0)
    else:
        kT = tl.load(k_ptrs)
        vT = tl.load(v_ptrs)
    p = tl.math.exp2(tl.dot(q, kT, input_precision=INPUT_PRECISION) * qk_scale - lse[:, None])
    if PARTIAL:
        p = tl.where(_segment_mask(SEG, ALLOWED, NUM_SEGMENTS, seg_q, cols, N_CTX), p, 0.0)
    dp = tl.dot(do, vT, input_precision=INPUT_PRECISION)
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=INPUT_PRECISION)
    return dq


@triton.autotune(
    configs=_configs("dq", (64, 128), (32, 64)),
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _pruner("dq")},
)
@triton.jit
def attention_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, SEG, ALLOWED, Q_ORDER,
    KV_RUN_OFFSETS, KV_RUN_STARTS, KV_RUN_ENDS, KV_PART_OFFSETS, KV_PART_INDICES,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_gb, stride_gh, stride_gn,
    H, N_CTX, NUM_SEGMENTS, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, SPARSE_BLOCK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dQ of one query tile, over the key tiles it may attend (the forward lists)."""
    bh, tile, start_m = _ordered_program(Q_ORDER, N_CTX, BLOCK_M, SPARSE_BLOCK)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < N_CTX
    q = _load_rows(Q + b * stride_qb + h * stride_qh, rows, stride_qn, stride_qd, N_CTX, HEAD_DIM)
    do = _load_rows(DO + b * stride_dob + h * stride_doh, rows, stride_don, stride_dod, N_CTX, HEAD_DIM)
    lse = tl.load(LSE + bh.to(tl.int64) * N_CTX + rows, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * N_CTX + rows, mask=row_ok, other=0.0)
    seg_q = tl.load(SEG + rows, mask=row_ok, other=0)
    K_head = K + b * stride_kb + h * stride_kh
    V_head = V + b * stride_vb + h * stride_vh

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    lo, hi = _row_range(KV_RUN_OFFSETS, tile, start_m, N_CTX)
    for r in range(lo, hi):
        run_start = tl.load(KV_RUN_STARTS + r) * SPARSE_BLOCK
        run_end = tl.load(KV_RUN_ENDS + r) * SPARSE_BLOCK
        for start_n in range(run_start, run_end, BLOCK_N):
            dq = _dq_tile(
                dq, q, do, lse, delta, seg_q, K_head, V_head, start_n, SEG, ALLOWED, NUM_SEGMENTS, N_CTX,
                qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, HEAD_DIM, BLOCK_N, False, INPUT_PRECISION,
            )  # fmt: skip
    lo, hi = _row_range(KV_PART_OFFSETS, tile, start_m, N_CTX)
    for i in range(lo, hi):
        kv_start = tl.load(KV_PART_INDICES + i) * SPARSE_BLOCK
        for sub in tl.static_range(0, SPARSE_BLOCK, BLOCK_N):
            dq = _dq_tile(
                dq, q, do, lse, delta, seg_q, K_head, V_head, kv_start + sub, SEG, ALLOWED, NUM_SEGMENTS, N_CTX,
                qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, HEAD_DIM, BLOCK_N, True, INPUT_PRECISION,
            )  # fmt: skip

    tl.store(
        DQ + b * stride_gb + h * stride_gh + rows[:, None] * stride_gn + offs_d[None, :],
        (dq * sm_scale).to(DQ.dtype.element_ty),
        mask=row_ok[:, None],
    )
