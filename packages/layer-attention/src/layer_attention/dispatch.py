"""Backend selection. A named backend runs or raises, never falls back; ``"auto"`` is never slower
than the stock SDPA path by construction.

``"auto"`` takes SDPA (flash / cuDNN for full layouts, one unmasked call per query group otherwise)
unless another backend that can run the call was *measured* faster on this device for this dtype,
length and layout density (:mod:`layer_attention.crossovers`). The choice and the reason every other
backend was passed over are returned by :func:`explain_auto` and :func:`backend_reasons` with
``auto=True``.

The choice depends only on an :class:`~layer_attention.call.AttentionCall` (device, dtype, head dim,
N, layout, backward or not), so it is cached per call shape and, under ``torch.compile``, computed
once at trace time (``assume_constant_result``): the traced graph holds only the chosen backend.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .backends import AUTO_ORDER, BACKENDS
from .call import AttentionCall
from .crossovers import BASELINE, MIN_SPEEDUP, CrossoverTable, Estimate, packaged_table
from .layout import SegmentLayout


class BackendNotSupportedError(RuntimeError):
    """The requested backend (or every backend ``"auto"`` tried) cannot run these inputs."""


@dataclass(frozen=True)
class AutoChoice:
    """What ``"auto"`` runs for one call, and why each other backend was not picked."""

    backend: str
    reasons: dict[str, list[str]]


def explain_auto(call: AttentionCall, table: CrossoverTable | None = None) -> AutoChoice:
    """The backend ``"auto"`` picks for ``call`` and, for every backend, why not (empty: the pick).

    Args:
        call: the call (``AttentionCall.of(q, layout)``, or built by hand for another device).
        table: measured crossovers; default: the packaged table (:func:`packaged_table`).

    Raises:
        BackendNotSupportedError: no backend can run the call.
    """
    table = packaged_table() if table is None else table
    reasons = {name: backend.not_supported_reasons(call) for name, backend in BACKENDS.items()}
    for name in BACKENDS:
        if name not in AUTO_ORDER:
            reasons[name] = reasons[name] + BACKENDS[name].auto_reasons(call)
    runnable = []
    for name in AUTO_ORDER:
        reasons[name] = reasons[name] + BACKENDS[name].auto_reasons(call)
        if not reasons[name]:
            runnable.append(name)
    if not runnable:
        lines = "\n".join(f"  {name}: " + "; ".join(reasons[name]) for name in AUTO_ORDER)
        raise BackendNotSupportedError(f"no backend can run {call.describe()}:\n{lines}")
    if BASELINE not in runnable:
        # the baseline cannot run (never the case for float dtypes); take the first that can
        choice = runnable[0]
        return AutoChoice(choice, {n: r if n != choice else [] for n, r in reasons.items()})

    layout = call.layout
    estimates: dict[str, Estimate | str] = {
        name: table.estimate(
            name,
            device_name=call.device_name,
            capability=call.capability,
            dtype=call.dtype,
            head_dim=call.head_dim,
            seq_len=call.seq_len,
            density=layout.density,
            mode=call.mode,
        )
        for name in runnable
        if name != BASELINE
    }
    faster = {
        name: e.speedup
        for name, e in estimates.items()
        if isinstance(e, Estimate) and e.speedup >= MIN_SPEEDUP
    }
    choice = max(faster, key=lambda n: faster[n]) if faster else BASELINE
    for name, estimate in estimates.items():
        if name == choice:
            continue
        if isinstance(estimate, Estimate):
            if estimate.speedup >= MIN_SPEEDUP:
                why = f"{choice} is faster still; {name} is {estimate.basis}"
            else:
                why = f"not measured faster than {BASELINE} (needs >= {MIN_SPEEDUP:g}x): {estimate.basis}"
        else:
            why = f"picked only where measured faster than {BASELINE}: {estimate}"
        reasons[name] = reasons[name] + [why]
    if choice != BASELINE:
        estimate = estimates[choice]
        assert isinstance(estimate, Estimate)
        reasons[BASELINE] = [f"{choice} is measured faster: {estimate.basis}"]
    reasons[choice] = []
    return AutoChoice(choice, reasons)


@functools.lru_cache(maxsize=256)
def _auto_cached(call: AttentionCall) -> str:
    return explain_auto(call).backend


@torch.compiler.assume_constant_result
def _auto_backend(
    device_type: str,
    device_index: int | None,
    dtype: torch.dtype,
    head_dim: int,
    seq_len: int,
    layout_key: object,
    needs_grad: bool,
) -> str:
    """Plain-constant entry point, so ``torch.compile`` runs the choice once, eagerly, when tracing."""
    from .call import device_identity

    name, capability = device_identity(device_type, device_index)
    call = AttentionCall(
        device_type=device_type,
        dtype=dtype,
        head_dim=head_dim,
        seq_len=seq_len,
        layout_key=layout_key,  # type: ignore[arg-type]
        needs_grad=needs_grad,
        device_name=name,
        capability=capability,
    )
    return _auto_cached(call)


@torch.compiler.assume_constant_result
def _named_reasons(name: str, device_type: str, dtype: torch.dtype, head_dim: int) -> str:
    """Why backend ``name`` cannot run (``""``: it can), as one constant string."""
    call = AttentionCall(device_type=device_type, dtype=dtype, head_dim=head_dim, seq_len=0)
    return "; ".join(BACKENDS[name].not_supported_reasons(call))


def backend_reasons(
    q: torch.Tensor, layout: SegmentLayout | None = None, *, auto: bool = False
) -> dict[str, list[str]]:
    """For every backend, why it is not used for ``q`` (empty list: it is usable / it is the pick).

    ``auto=False``: why it cannot run when requested by name. ``auto=True``: why ``"auto"`` does not
    pick it for ``q`` under ``layout`` (the pick has an empty list); see :func:`explain_auto`.
    """
    if auto:
        return explain_auto(AttentionCall.of(q, layout)).reasons
    return {name: backend.not_supported_reasons(q) for name, backend in BACKENDS.items()}


def select_backend(
    q: torch.Tensor,
    backend: str = "auto",
    layout: SegmentLayout | None = None,
    *,
    needs_grad: bool | None = None,
) -> str:
    """Name of the backend ``layer_attention(q, ..., layout, backend=backend)`` runs.

    ``needs_grad`` (default: grad mode and ``q.requires_grad``) says whether forward + backward
    time or forward time alone decides ``"auto"``.

    Raises:
        ValueError: ``backend`` is not a known name.
        BackendNotSupportedError: the named backend, or every backend ``"auto"`` tries, is rejected;
            the message lists each rejected backend and why.
    """
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of {sorted(BACKENDS)}")
        reasons = _named_reasons(backend, q.device.type, q.dtype, q.shape[-1])
        if reasons:
            raise BackendNotSupportedError(f"backend {backend!r} cannot run {_describe(q)}: {reasons}")
        return backend
    if needs_grad is None:
        needs_grad = torch.is_grad_enabled() and q.requires_grad
    try:
        return _auto_backend(
            q.device.type,
            q.device.index,
            q.dtype,
            q.shape[-1],
            q.shape[-2],
            None if layout is None or layout.is_full else layout.key,
            bool(needs_grad),
        )
    except BackendNotSupportedError as error:
        per_backend = str(error).split("\n", 1)[1]
        raise BackendNotSupportedError(f"no backend can run {_describe(q)}:\n{per_backend}") from None


def _describe(q: torch.Tensor) -> str:
    return f"{q.dtype} inputs of shape {tuple(q.shape)} on {q.device}"
