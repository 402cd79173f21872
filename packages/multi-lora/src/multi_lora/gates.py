"""Runtime gates: the per-adapter multiplier applied on top of the static ``alpha / r`` scaling.

One :class:`AdapterGate` object is shared by every layer of an adapter, so setting a gate is one
in-place copy however many layers the adapter has. Values live in preallocated tensors that are
updated in place: ``torch.compile`` treats them as graph inputs, so changing a value never
recompiles. Only the *kind* of gate (off / scalar / per-sample) and the per-sample batch size are
host-side facts that compiled graphs specialise on.

Gates persist until they are set again. There is deliberately no context manager that restores a
previous value on exit: gradient checkpointing re-runs the forward during backward, after any such
context would have closed, and must see the same gates.

Batch rule for per-sample gates (length ``B``): a layer whose input has leading dimension ``N``
applies gate ``g[i]`` to rows ``i * (N // B) ... (i + 1) * (N // B) - 1``, i.e. the gate is
``repeat_interleave``-d. That matches batch-major folding such as ``[B * frames, ...]``
(``rearrange(x, "b f ... -> (b f) ...")``). Classifier-free guidance *tiles* the batch
(``torch.cat([x, x])``), so for CFG pass the tiled gate (``torch.cat([g, g])``, length ``2B``)
explicitly; the rule never guesses a layout. ``N`` not divisible by ``B`` is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

GateKind = Literal["off", "scalar", "per_sample"]
GateValue = float | int | Sequence[float] | torch.Tensor


class AdapterGate:
    """The gate of one adapter: off (exact 0.0), a scalar, or one value per sample.

    ``scalar`` is a 0-d tensor allocated once; ``per_sample`` is allocated when a per-sample gate of a
    new length arrives and then updated in place.
    """

    def __init__(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.kind: GateKind = "scalar"
        self.scalar = torch.ones((), device=device, dtype=dtype)
        self.per_sample: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"AdapterGate(kind={self.kind!r}, value={self.value()!r})"

    def set(self, value: GateValue) -> None:
        """Set a Python number (0.0 switches the branch off) or a 1-D per-sample tensor / sequence."""
        if isinstance(value, bool):
            raise TypeError("a gate is a number or a per-sample tensor, got a bool (use enable/disable)")
        if isinstance(value, (int, float)):
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError(f"gate value must be finite, got {number}")
            with torch.no_grad():
                self.scalar.fill_(number)
            self.kind = "off" if number == 0.0 else "scalar"
            return
        values = torch.as_tensor(value)
        if values.dim() != 1 or values.numel() == 0:
            raise ValueError(
                f"a per-sample gate must be a non-empty 1-D tensor [B], got shape {tuple(values.shape)}"
            )
        if not values.dtype.is_floating_point:
            values = values.float()
        if not bool(torch.isfinite(values).all()):
            raise ValueError("per-sample gate values must be finite")
        if self.per_sample is None or self.per_sample.shape != values.shape:
            # On the model's device (the scalar follows it): one copy here, none per layer in forward.
            self.per_sample = torch.empty(values.shape, device=self.scalar.device, dtype=self.scalar.dtype)
        with torch.no_grad():
            self.per_sample.copy_(values)
        self.kind = "per_sample"

    def value(self) -> float | torch.Tensor:
        """The current value: a float, or a copy of the per-sample tensor."""
        if self.kind == "per_sample":
            assert self.per_sample is not None
            return self.per_sample.detach().clone()
        return float(self.scalar)

    def apply_to_rank(self, hidden: torch.Tensor, scaling: float) -> torch.Tensor:
        """``hidden * scaling * gate`` on the rank-r intermediate ``[N, ..., r]`` (cheap: r columns)."""
        if self.kind != "per_sample":
            return hidden * (self.scalar.to(hidden) * scaling)
        assert self.per_sample is not None
        gate = self.per_sample.to(device=hidden.device, dtype=hidden.dtype)
        rows, batch = (hidden.shape[0] if hidden.dim() > 1 else 0), gate.shape[0]
        if rows == 0 or rows % batch != 0:
            raise ValueError(
                f"per-sample gate has {batch} values but the layer input has leading dimension {rows} "
                f"(input shape {tuple(hidden.shape[:-1])} + features); it must be a multiple of {batch}. "
                "For classifier-free guidance pass the tiled gate torch.cat([g, g])."
            )
        if rows != batch:
            gate = gate.repeat_interleave(rows // batch)
        return hidden * (gate * scaling).view(rows, *([1] * (hidden.dim() - 1)))

    def follow_device(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Move the buffers where ``nn.Module._apply``'s ``fn`` sends tensors (``model.to(device)``).

        Only the device follows; gate values stay float32 so a half-precision model keeps exact gates.
        """
        device = fn(self.scalar).device
        self.scalar = self.scalar.to(device)
        if self.per_sample is not None:
            self.per_sample = self.per_sample.to(device)
