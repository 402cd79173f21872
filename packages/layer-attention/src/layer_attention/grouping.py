"""Exact masked attention without a mask: group queries by their allowed-key set, gather those keys.

Query segments whose rows of the allowed table are equal form a group; each group attends, with an
unmasked attention call, to the concatenation of its allowed key segments. That is exact, keeps
memory linear in N, lets SDPA stay on its flash/efficient kernels, and autograd flows through the
slices and concatenations. SDPA and xformers share this one implementation and differ only in the
``attend`` callable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .layout import SegmentLayout

#: ``attend(q, k, v, scale) -> out`` on ``[B, H, n, D]`` tensors, without any mask.
AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def _gather(x: torch.Tensor, ranges: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Token ranges of ``x`` along dim 2, concatenated (a view when it is one range)."""
    if len(ranges) == 1:
        start, end = ranges[0]
        return x[:, :, start:end]
    return torch.cat([x[:, :, start:end] for start, end in ranges], dim=2)


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout, scale: float, attend: AttendFn
) -> torch.Tensor:
    """Attention under ``layout`` as one unmasked ``attend`` call per query group."""
    pieces: dict[int, torch.Tensor] = {}  # query range start -> output rows of that range
    for group in layout.query_groups:
        keys = _gather(k, group.key_ranges)
        values = _gather(v, group.key_ranges)
        out = attend(_gather(q, group.query_ranges), keys, values, scale)
        offset = 0
        for start, end in group.query_ranges:
            pieces[start] = out[:, :, offset : offset + end - start]
            offset += end - start
    if len(pieces) == 1:
        return next(iter(pieces.values()))
    return torch.cat([pieces[start] for start in sorted(pieces)], dim=2)
