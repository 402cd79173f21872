"""Attention backends. Each declares what it supports as class data; `not_supported_reasons` reads it.

The dispatcher (:mod:`layer_attention.dispatch`) asks every backend for its reasons and either runs
one that has none or raises with all of them; among those that can run, ``"auto"`` follows the
measured crossovers (:mod:`layer_attention.crossovers`).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F

from .call import AttentionCall
from .grouping import grouped_attention
from .layout import SegmentLayout
from .reference import reference_attention

_HALF_AND_FLOAT = frozenset({torch.float16, torch.bfloat16, torch.float32})


@functools.cache
def _import_error(module: str) -> str | None:
    """Why ``module`` cannot be imported (None when it can); cached, imports are not free."""
    try:
        importlib.import_module(module)
    except Exception as error:  # a broken install raises more than ImportError; report it, don't hide it
        return f"{type(error).__name__}: {error}"
    return None


class AttentionBackend(ABC):
    """One way to compute ``layer_attention``; subclasses fill in the class data and :meth:`attention`."""

    name: ClassVar[str]
    #: device types it can run on (None: any).
    devices: ClassVar[frozenset[str] | None] = None
    #: device types ``backend="auto"`` may pick it for.
    auto_devices: ClassVar[frozenset[str] | None] = None
    dtypes: ClassVar[frozenset[torch.dtype]] = _HALF_AND_FLOAT
    #: supported head dims (None: any).
    head_dims: ClassVar[frozenset[int] | None] = None
    requires_cuda: ClassVar[bool] = False
    #: third-party module that must import (None: torch only).
    required_module: ClassVar[str | None] = None

    def import_error(self) -> str | None:
        return None if self.required_module is None else _import_error(self.required_module)

    def runnable_devices(self) -> frozenset[str] | None:
        return self.devices

    def not_supported_reasons(self, q: torch.Tensor | AttentionCall) -> list[str]:
        """Every reason this backend cannot run ``q`` (and same-shaped k, v); empty when it can."""
        call = q if isinstance(q, AttentionCall) else AttentionCall.of(q)
        reasons: list[str] = []
        error = self.import_error()
        if error is not None:
            reasons.append(f"not importable ({self.required_module}: {error})")
        devices = self.runnable_devices()
        if devices is not None and call.device_type not in devices:
            need = "needs CUDA" if self.requires_cuda else f"runs on {sorted(devices)}"
            reasons.append(f"{need} (tensors are on {call.device_type})")
        if call.dtype not in self.dtypes:
            reasons.append(f"dtype {call.dtype} not in {sorted(str(d) for d in self.dtypes)}")
        if self.head_dims is not None and call.head_dim not in self.head_dims:
            reasons.append(f"head dim {call.head_dim} not in {sorted(self.head_dims)}")
        return reasons

    def auto_reasons(self, q: torch.Tensor | AttentionCall) -> list[str]:
        """Extra reasons ``"auto"`` skips this backend (it may still run when requested by name)."""
        device_type = q.device_type if isinstance(q, AttentionCall) else q.device.type
        if self.auto_devices is not None and device_type not in self.auto_devices:
            return [f"auto picks it only for {sorted(self.auto_devices)} tensors (got {device_type})"]
        return []

    @abstractmethod
    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout | None, scale: float
    ) -> torch.Tensor:
        """``[B, H, N, D]`` output; inputs are validated and supported. ``layout=None``: full attention."""


class TritonBackend(AttentionBackend):
    """The block-sparse FlashAttention kernel (:mod:`layer_attention.kernels`)."""

    name = "triton"
    devices = frozenset({"cuda"})
    auto_devices = frozenset({"cuda"})
    head_dims = frozenset({16, 32, 64, 128})
    requires_cuda = True
    required_module = "triton"

    @staticmethod
    def interpreted() -> bool:
        """Whether the kernels run in Triton's CPU interpreter (fixed when they were first imported)."""
        if _import_error("triton") is not None:
            return False
        if "layer_attention.kernels.triton_kernels" in sys.modules:
            from .kernels.triton_kernels import INTERPRETED

            return INTERPRETED
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

    def runnable_devices(self) -> frozenset[str] | None:
        assert self.devices is not None
        return self.devices | {"cpu"} if self.interpreted() else self.devices

    def not_supported_reasons(self, q: torch.Tensor | AttentionCall) -> list[str]:
        reasons = super().not_supported_reasons(q)
        if q.dtype == torch.bfloat16 and self.interpreted():
            reasons.append("the Triton interpreter (TRITON_INTERPRET=1) cannot compute in bfloat16")
        return reasons

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout | None, scale: float
    ) -> torch.Tensor:
        from .kernels.triton_autograd import triton_layer_attention

        return triton_layer_attention(q, k, v, layout or SegmentLayout.cached([q.shape[2]]), scale)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


class SDPABackend(AttentionBackend):
    """``F.scaled_dot_product_attention``: unmasked for full layouts, per query group otherwise."""

    name = "sdpa"
    dtypes = _HALF_AND_FLOAT | {torch.float64}

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout | None, scale: float
    ) -> torch.Tensor:
        if layout is None or layout.is_full:
            return _sdpa(q, k, v, scale)  # no mask at all, so the flash / efficient kernels stay eligible
        return grouped_attention(q, k, v, layout, scale, _sdpa)


def _xformers_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    from xformers.ops import fmha

    out: torch.Tensor = fmha.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale
    )
    return out.transpose(1, 2)


class XFormersBackend(AttentionBackend):
    """``xformers.ops.memory_efficient_attention``: native for full and block-diagonal layouts."""

    name = "xformers"
    devices = frozenset({"cuda"})
    auto_devices = frozenset({"cuda"})
    head_dims = frozenset(range(8, 257, 8))
    requires_cuda = True
    required_module = "xformers.ops"

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout | None, scale: float
    ) -> torch.Tensor:
        if layout is None or layout.is_full:
            return _xformers_attend(q, k, v, scale)
        if layout.is_block_diagonal:
            return self._block_diagonal(q, k, v, layout, scale)
        return grouped_attention(q, k, v, layout, scale, _xformers_attend)

    @staticmethod
    def _block_diagonal(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout, scale: float
    ) -> torch.Tensor:
        """One launch: the batch folded into one sequence of B x S blocks (xformers wants B = 1)."""
        from xformers.ops import fmha

        batch, heads, seq_len, head_dim = q.shape
        bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(list(layout.lengths) * batch)

        def fold(x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).reshape(1, batch * seq_len, heads, head_dim)

        out: torch.Tensor = fmha.memory_efficient_attention(
            fold(q), fold(k), fold(v), attn_bias=bias, scale=scale
        )
        return out.reshape(batch, seq_len, heads, head_dim).transpose(1, 2)


class ReferenceBackend(AttentionBackend):
    """Dense-mask math in fp32: the test oracle, O(N^2) memory; never picked by ``"auto"``."""

    name = "reference"
    auto_devices = frozenset()
    dtypes = _HALF_AND_FLOAT | {torch.float64}

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout | None, scale: float
    ) -> torch.Tensor:
        return reference_attention(q, k, v, layout or SegmentLayout.cached([q.shape[2]]), scale)


#: Every backend by name.
BACKENDS: dict[str, AttentionBackend] = {
    b.name: b for b in (TritonBackend(), XFormersBackend(), SDPABackend(), ReferenceBackend())
}
#: The backends ``backend="auto"`` chooses among: SDPA (the stock path, the baseline) unless one of
#: the others is measured faster for the call (:mod:`layer_attention.crossovers`); ties in that
#: order.
AUTO_ORDER: tuple[str, ...] = ("triton", "xformers", "sdpa")
