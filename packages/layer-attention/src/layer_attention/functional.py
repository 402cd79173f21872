"""`layer_attention`: the public entry point (validation, backend choice, default scale)."""

from __future__ import annotations

import math

import torch

from .backends import BACKENDS
from .dispatch import select_backend
from .layout import SegmentLayout


def check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout | None, scale: float | None
) -> None:
    """Raise a clear error for malformed inputs, before any compute."""
    if layout is not None and not isinstance(layout, SegmentLayout):
        raise TypeError(f"layout must be a SegmentLayout or None, got {type(layout).__name__}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be [B, H, N, D], got shape {tuple(x.shape)}")
    if not q.shape == k.shape == v.shape:
        raise ValueError(
            f"q, k, v must have the same [B, H, N, D] shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if layout is not None and q.shape[2] != layout.seq_len:
        raise ValueError(
            f"sequence length N={q.shape[2]} does not match the layout's {layout.seq_len} tokens "
            f"(segments {list(layout.lengths)})"
        )
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")


def layer_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: SegmentLayout | None = None,
    *,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Exact attention over a segmented sequence; differentiable.

    Args:
        q, k, v: ``[B, H, N, D]`` (strided views are fine), one dtype and device.
        layout: the segments of the N tokens and which segment may attend which; ``None``: full
            attention. Build it once per shape (``SegmentLayout.cached``) and reuse it.
        scale: softmax scale; default ``1 / sqrt(D)``.
        backend: ``"auto"`` (SDPA unless another backend is measured faster for this call on this
            device, see :mod:`layer_attention.dispatch`), or ``"triton"``, ``"xformers"``, ``"sdpa"``,
            ``"reference"``. A named backend that cannot run raises
            :class:`~layer_attention.dispatch.BackendNotSupportedError`; see :func:`select_backend`.

    Returns:
        ``[B, H, N, D]`` in q's dtype.
    """
    check_inputs(q, k, v, layout, scale)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    name = select_backend(q, backend, layout, needs_grad=needs_grad)
    return BACKENDS[name].attention(q, k, v, layout, scale if scale is not None else q.shape[-1] ** -0.5)
