"""`autograd.Function` around the Triton launchers: saves O and the LSE, recomputes P in backward."""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from layer_attention.layout import SegmentLayout

from .triton_launch import triton_attention_backward, triton_attention_forward


class TritonLayerAttention(torch.autograd.Function):
    """Differentiable block-sparse attention; the layout and scale are non-tensor arguments."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout, scale: float
    ) -> torch.Tensor:
        out, lse = triton_attention_forward(q, k, v, layout, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout = layout
        ctx.scale = scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = triton_attention_backward(grad_out, q, k, v, out, lse, ctx.layout, ctx.scale)
        return dq, dk, dv, None, None


def triton_layer_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout, scale: float
) -> torch.Tensor:
    """Functional form of :class:`TritonLayerAttention` (inputs already validated by the dispatcher)."""
    out: torch.Tensor = TritonLayerAttention.apply(q, k, v, layout, scale)
    return out
