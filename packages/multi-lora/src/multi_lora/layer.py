"""``MultiLoraLinear``: an ``nn.Linear`` with any number of named, independently switchable LoRAs.

Per-adapter state lives in dicts keyed by adapter name (peft's layout and names: ``base_layer``,
``lora_A.<name>``, ``lora_B.<name>``), and two class-level tuples name those dicts so deleting,
moving or freezing an adapter loops over them instead of hard-coding attributes.

Each adapter has three independent flags: ``enabled`` (is the branch part of the forward),
trainable (``requires_grad`` of its parameters; only :meth:`set_trainable` changes it) and merged
(folded into ``base_layer.weight``). Its output is ``B(A(dropout(x)) * scaling * gate)``: the gate
multiplies the rank-r intermediate, which is ``r / out`` of the work of scaling the output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .config import GateMode, InitKind
from .gates import AdapterGate


class MultiLoraLinear(nn.Module):
    """Wraps ``base_layer`` (an ``nn.Linear``, kept as is) and adds named LoRA branches.

    ``forward(x) = base_layer(x) + sum over computed adapters of B(A(dropout(x)) * scaling * gate)``.
    An adapter is computed when it is enabled, not merged, and its gate is not "off" (a scalar 0.0),
    except in dense mode (see :class:`multi_lora.AdapterConfig` ``gate_mode``), where an off gate is
    computed and multiplied by zero so that data-parallel training sees its parameters used.
    """

    #: ModuleDicts holding the adapter modules (parameters), keyed by adapter name.
    adapter_layer_names: tuple[str, ...] = ("lora_A", "lora_B", "lora_dropout")
    #: Plain dicts holding the rest of the per-adapter state, keyed by adapter name.
    other_param_names: tuple[str, ...] = ("r", "lora_alpha", "scaling", "gate_mode", "enabled", "lora_gate")

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"MultiLoraLinear wraps an nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.gate_mode: dict[str, GateMode] = {}
        self.enabled: dict[str, bool] = {}
        self.lora_gate: dict[str, AdapterGate] = {}
        self.merged_adapters: list[str] = []
        # The base weight as it was before the first merge, when a merge asked to keep it.
        self.kept_weight: torch.Tensor | None = None

    # ----------------------------------------------------------------------------------- adapters

    def add_adapter(
        self,
        name: str,
        *,
        rank: int,
        alpha: float,
        gate: AdapterGate,
        use_rslora: bool = False,
        init: InitKind = "kaiming",
        dropout: float = 0.0,
        trainable: bool = True,
        gate_mode: GateMode = "auto",
    ) -> None:
        """Create adapter ``name`` (enabled, not merged) on the base layer's device and dtype."""
        if name in self.lora_A:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        weight = self.base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        lora_a = nn.Linear(self.in_features, rank, bias=False, **factory)
        lora_b = nn.Linear(rank, self.out_features, bias=False, **factory)
        if init == "kaiming":
            nn.init.kaiming_uniform_(lora_a.weight, a=math.sqrt(5))
        else:
            nn.init.normal_(lora_a.weight, std=1.0 / rank)
        nn.init.zeros_(lora_b.weight)
        self.lora_A[name] = lora_a
        self.lora_B[name] = lora_b
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for attribute in self.adapter_layer_names:  # new modules follow this layer's train/eval mode
            getattr(self, attribute)[name].train(self.training)
        self.r[name] = rank
        self.lora_alpha[name] = float(alpha)
        self.scaling[name] = float(alpha) / (math.sqrt(rank) if use_rslora else rank)
        self.gate_mode[name] = gate_mode
        self.enabled[name] = True
        self.lora_gate[name] = gate
        self.set_trainable(name, trainable)

    def delete_adapter(self, name: str) -> None:
        """Remove every trace of ``name`` (it must not be merged)."""
        self._check_name(name)
        if name in self.merged_adapters:
            raise RuntimeError(f"adapter {name!r} is merged into the base weight; unmerge it before deleting")
        for attribute in self.adapter_layer_names + self.other_param_names:
            getattr(self, attribute).pop(name)

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return tuple(self.lora_A.keys())

    def lora_pair(self, name: str) -> tuple[nn.Linear, nn.Linear]:
        """``(lora_A[name], lora_B[name])``, typed."""
        self._check_name(name)
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]
        assert isinstance(lora_a, nn.Linear) and isinstance(lora_b, nn.Linear)
        return lora_a, lora_b

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        self._check_name(name)
        for attribute in self.adapter_layer_names:
            yield from getattr(self, attribute)[name].parameters()

    def set_trainable(self, name: str, trainable: bool) -> None:
        """Set ``requires_grad`` of the adapter's parameters; nothing else changes."""
        for parameter in self.adapter_parameters(name):
            parameter.requires_grad_(trainable)

    def is_trainable(self, name: str) -> bool:
        return any(p.requires_grad for p in self.adapter_parameters(name))

    def _check_name(self, name: str) -> None:
        if name not in self.lora_A:
            raise KeyError(f"no adapter {name!r} on this layer (adapters: {list(self.lora_A)})")

    # ------------------------------------------------------------------------------------ forward

    def _computes(self, name: str) -> bool:
        """Host-side decision whether the branch of ``name`` runs in this forward."""
        if not self.enabled[name] or name in self.merged_adapters:
            return False
        if self.lora_gate[name].kind != "off":
            return True
        mode = self.gate_mode[name]
        if mode == "auto":
            return self.training and self.is_trainable(name)
        return mode == "dense"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        for name in self.lora_A:
            if not self._computes(name):
                continue
            lora_a, lora_b = self.lora_pair(name)
            hidden = lora_a(self.lora_dropout[name](x.to(lora_a.weight.dtype)))
            hidden = self.lora_gate[name].apply_to_rank(hidden, self.scaling[name])
            result = _add_projection(result, hidden, lora_b.weight)
        return result

    # -------------------------------------------------------------------------------------- merge

    def delta_weight(self, name: str) -> torch.Tensor:
        """``B @ A * scaling * gate`` in float32: what merging ``name`` adds to the base weight."""
        gate = self.lora_gate[name]
        if gate.kind == "per_sample":
            raise ValueError(f"adapter {name!r} has a per-sample gate; only a scalar gate can be merged")
        lora_a, lora_b = self.lora_pair(name)
        return (lora_b.weight.detach().float() @ lora_a.weight.detach().float()) * (
            self.scaling[name] * float(gate.scalar)
        )

    @torch.no_grad()
    def merge(self, name: str, *, keep_copy: bool = False) -> None:
        """Fold ``name`` into ``base_layer.weight`` (delta in fp32). ``keep_copy`` makes unmerge exact."""
        self._check_name(name)
        if name in self.merged_adapters:
            raise RuntimeError(f"adapter {name!r} is already merged")
        delta = self.delta_weight(name)
        weight = self.base_layer.weight
        if keep_copy and self.kept_weight is None:
            self.kept_weight = weight.detach().clone()
        weight.copy_((weight.float() + delta).to(weight.dtype))
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        """Take ``name`` out of the base weight: exact when a copy was kept, else fp32 subtraction."""
        if name not in self.merged_adapters:
            raise RuntimeError(f"adapter {name!r} is not merged")
        weight = self.base_layer.weight
        remaining = [n for n in self.merged_adapters if n != name]
        if self.kept_weight is not None:
            if remaining:
                restored = self.kept_weight.float() + sum(self.delta_weight(n) for n in remaining)
                weight.copy_(restored.to(weight.dtype))
            else:
                weight.copy_(self.kept_weight)
                self.kept_weight = None
        else:
            weight.copy_((weight.float() - self.delta_weight(name)).to(weight.dtype))
        self.merged_adapters = remaining

    # ---------------------------------------------------------------------------------- plumbing

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> MultiLoraLinear:
        """``model.to(device)`` also moves the (unregistered, shared) gate buffers and the kept weight."""
        super()._apply(fn, recurse)
        for gate in self.lora_gate.values():
            gate.follow_device(fn)
        if self.kept_weight is not None:
            self.kept_weight = fn(self.kept_weight)
        return self

    def extra_repr(self) -> str:
        adapters = ", ".join(
            f"{n}(r={self.r[n]}, alpha={self.lora_alpha[n]:g}, enabled={self.enabled[n]}, "
            f"gate={self.lora_gate[n].kind}{', merged' if n in self.merged_adapters else ''})"
            for n in self.lora_A
        )
        return f"in_features={self.in_features}, out_features={self.out_features}, adapters=[{adapters}]"


def _add_projection(result: torch.Tensor, hidden: torch.Tensor, weight_b: torch.Tensor) -> torch.Tensor:
    """``result + hidden @ weight_b.T`` as one GEMM with accumulate (no output-width temporary)."""
    out_features = weight_b.shape[0]
    if hidden.dtype != result.dtype:
        hidden, weight_b = hidden.to(result.dtype), weight_b.to(result.dtype)
    if result.dim() == 1:
        return torch.addmv(result, weight_b, hidden)
    summed = torch.addmm(result.reshape(-1, out_features), hidden.reshape(-1, hidden.shape[-1]), weight_b.t())
    return summed.view(result.shape)
