"""Plain-math attention with the dense segment mask: the oracle every backend is tested against."""

from __future__ import annotations

import torch

from .layout import SegmentLayout


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v in fp32 (fp64 stays fp64), returned in q's dtype. O(N^2) memory."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2)) * scale
    scores = scores.masked_fill(~layout.dense_mask(q.device), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v.to(compute)).to(q.dtype)
