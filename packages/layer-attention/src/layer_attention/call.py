"""`AttentionCall`: the few facts about one call that backend choice depends on.

Choosing a backend never needs the tensors themselves, only their device, dtype, head dim and
length, the layout and whether a backward will follow. Keeping those in a small hashable record
lets the choice be cached per call shape and computed once, eagerly, when ``torch.compile`` traces
the call (see :mod:`layer_attention.dispatch`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .layout import LayoutKey, SegmentLayout


@functools.cache
def device_identity(device_type: str, index: int | None) -> tuple[str, tuple[int, int] | None]:
    """``(name, compute capability)`` of a device: ``("NVIDIA H200", (9, 0))``, ``("cpu", None)``."""
    if device_type != "cuda":
        return device_type, None
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), (major, minor)


@dataclass(frozen=True)
class AttentionCall:
    """One ``layer_attention`` call as the dispatcher sees it.

    ``layout_key`` is :attr:`SegmentLayout.key` (``None``: full attention); ``needs_grad`` says a
    backward will run, so forward + backward time decides instead of forward time alone.
    ``device_name`` / ``capability`` identify the accelerator (filled from the device when built by
    :meth:`of`; set by hand to ask what ``"auto"`` would pick on another device).
    """

    device_type: str
    dtype: torch.dtype
    head_dim: int
    seq_len: int
    layout_key: LayoutKey | None = None
    needs_grad: bool = False
    device_name: str = "cpu"
    capability: tuple[int, int] | None = None

    @classmethod
    def of(
        cls, q: torch.Tensor, layout: SegmentLayout | None = None, needs_grad: bool | None = None
    ) -> AttentionCall:
        """The call for ``q`` (``[B, H, N, D]``); ``needs_grad`` defaults to grad mode and ``q.requires_grad``."""
        name, capability = device_identity(q.device.type, q.device.index)
        if needs_grad is None:
            needs_grad = torch.is_grad_enabled() and q.requires_grad
        return cls(
            device_type=q.device.type,
            dtype=q.dtype,
            head_dim=int(q.shape[-1]),
            seq_len=int(q.shape[-2]) if q.dim() >= 2 else 0,
            layout_key=None if layout is None or layout.is_full else layout.key,
            needs_grad=bool(needs_grad),
            device_name=name,
            capability=capability,
        )

    @property
    def layout(self) -> SegmentLayout:
        """The (shared, cached) layout of this call; full attention over ``seq_len`` without a key."""
        if self.layout_key is None:
            return SegmentLayout.cached([self.seq_len])
        return SegmentLayout.from_key(self.layout_key)

    @property
    def mode(self) -> str:
        """``"fwd"`` or ``"fwd+bwd"``: which time the choice minimises."""
        return "fwd+bwd" if self.needs_grad else "fwd"

    def describe(self) -> str:
        return f"{self.dtype} inputs with head dim {self.head_dim}, N={self.seq_len} on {self.device_type}"
