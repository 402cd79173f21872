"""Backend selection: ``"auto"`` walks :data:`AUTO_ORDER`; a named backend runs or raises, never falls back."""

from __future__ import annotations

import torch

from .backends import AUTO_ORDER, BACKENDS


class BackendNotSupportedError(RuntimeError):
    """The requested backend (or every backend ``"auto"`` tried) cannot run these inputs."""


def backend_reasons(q: torch.Tensor) -> dict[str, list[str]]:
    """For every backend, why it cannot run ``q`` when requested by name (empty list: it can)."""
    return {name: backend.not_supported_reasons(q) for name, backend in BACKENDS.items()}


def select_backend(q: torch.Tensor, backend: str = "auto") -> str:
    """Name of the backend ``layer_attention(q, ..., backend=backend)`` runs.

    Raises:
        ValueError: ``backend`` is not a known name.
        BackendNotSupportedError: the named backend, or every backend ``"auto"`` tries, is rejected;
            the message lists each rejected backend and why.
    """
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of {sorted(BACKENDS)}")
        reasons = BACKENDS[backend].not_supported_reasons(q)
        if reasons:
            raise BackendNotSupportedError(
                f"backend {backend!r} cannot run {_describe(q)}: " + "; ".join(reasons)
            )
        return backend
    rejected: dict[str, list[str]] = {}
    for name in AUTO_ORDER:
        candidate = BACKENDS[name]
        reasons = candidate.not_supported_reasons(q) + candidate.auto_reasons(q)
        if not reasons:
            return name
        rejected[name] = reasons
    lines = "\n".join(f"  {name}: " + "; ".join(reasons) for name, reasons in rejected.items())
    raise BackendNotSupportedError(f"no backend can run {_describe(q)}:\n{lines}")


def _describe(q: torch.Tensor) -> str:
    return f"{q.dtype} inputs of shape {tuple(q.shape)} on {q.device}"
