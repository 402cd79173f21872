"""Per-adapter configuration: one dataclass holds every option an adapter has.

The names follow the issue's model-level API (``rank``, ``alpha``, ``layers``) and peft where peft
has a matching notion (``target_modules``, ``exclude_modules``, ``layers_pattern``, ``use_rslora``,
``rank_pattern`` / ``alpha_pattern``), so a config converts to peft's ``adapter_config.json`` and back
without guessing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

InitKind = Literal["kaiming", "gaussian"]
GateMode = Literal["auto", "skip", "dense"]

_INIT_KINDS = ("kaiming", "gaussian")
_GATE_MODES = ("auto", "skip", "dense")


def _as_names(value: str | Sequence[str] | None, what: str) -> str | tuple[str, ...] | None:
    """A regex string stays a string (peft semantics); any other sequence becomes a tuple of names."""
    if value is None or isinstance(value, str):
        return value
    names = tuple(value)
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise TypeError(f"{what} must be a regex string or a sequence of non-empty names, got {bad!r}")
    return names


def pattern_value(pattern: Mapping[str, Any], module_path: str) -> Any | None:
    """The value of the first ``pattern`` key that matches ``module_path`` as peft matches them.

    peft (``get_pattern_key``) treats a key as a regex that must match the end of the module path on a
    component boundary, so the full path ``"blocks.3.to_q"`` and the suffix ``"to_q"`` both match.
    """
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key.removeprefix('^')})$", module_path):
            return value
    return None


@dataclass(frozen=True)
class AdapterConfig:
    """How one named adapter is built and where it goes.

    Args:
        rank: LoRA rank ``r`` (``lora_A: [r, in]``, ``lora_B: [out, r]``).
        alpha: ``lora_alpha``; the static scaling is ``alpha / rank`` (``alpha / sqrt(rank)`` with
            ``use_rslora``). LayerFlow uses ``alpha=1``; AnimateDiff-style "scale = alpha" adapters use
            ``alpha=rank`` and put their strength in the gate.
        target_modules: module-name suffixes (``["to_q", "to_out.0"]``; a suffix matches whole dotted
            components) or one regex string that must match the full module path (peft semantics).
        layers: keep only modules whose layer index (see ``layers_pattern``) is in this sequence, e.g.
            ``range(5, 30, 6)`` for LayerFlow's "every 6th block". ``None`` keeps all.
        layers_pattern: the container whose numeric child is the layer index (``"transformer_blocks"``).
            ``None``: the first all-digit component of the module path.
        exclude_modules: suffixes or a regex, removed from the targets.
        use_rslora: scale by ``alpha / sqrt(rank)`` (rank-stabilised LoRA).
        init: ``"kaiming"`` (A kaiming-uniform(a=sqrt(5)), B zero: the adapter starts as identity) or
            ``"gaussian"`` (A normal(std=1/r), B zero), as peft.
        dropout: dropout on the adapter input (training only).
        trainable: initial ``requires_grad`` of the adapter's parameters. Enabling or gating never
            changes it; use ``set_trainable``.
        gate_mode: what a scalar gate of exactly 0 does. ``"skip"``: the branch is not computed.
            ``"dense"``: it is computed and multiplied by 0, so DDP sees the parameters used.
            ``"auto"``: dense while the layer is training and the adapter has trainable parameters,
            skip otherwise.
        rank_pattern / alpha_pattern: per-module overrides keyed like peft (regex matching the end of
            the module path); importers fill them when a file has mixed ranks.
    """

    rank: int
    alpha: float
    target_modules: str | Sequence[str]
    layers: Sequence[int] | None = None
    layers_pattern: str | None = None
    exclude_modules: str | Sequence[str] | None = None
    use_rslora: bool = False
    init: InitKind = "kaiming"
    dropout: float = 0.0
    trainable: bool = True
    gate_mode: GateMode = "auto"
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive int, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool):
            raise TypeError(f"alpha must be a number, got {self.alpha!r}")
        targets = _as_names(self.target_modules, "target_modules")
        if not targets:
            raise ValueError("target_modules must name at least one module")
        object.__setattr__(self, "target_modules", targets)
        object.__setattr__(self, "exclude_modules", _as_names(self.exclude_modules, "exclude_modules"))
        if self.layers is not None:
            layers = tuple(self.layers)
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
                raise ValueError(f"layers must be a non-empty sequence of non-negative ints, got {layers!r}")
            object.__setattr__(self, "layers", layers)
        if self.init not in _INIT_KINDS:
            raise ValueError(f"init must be one of {_INIT_KINDS}, got {self.init!r}")
        if self.gate_mode not in _GATE_MODES:
            raise ValueError(f"gate_mode must be one of {_GATE_MODES}, got {self.gate_mode!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        bad_ranks = {k: v for k, v in self.rank_pattern.items() if not isinstance(v, int) or v < 1}
        if bad_ranks:
            raise ValueError(f"rank_pattern values must be positive ints, got {bad_ranks}")
        object.__setattr__(self, "rank_pattern", dict(self.rank_pattern))
        object.__setattr__(self, "alpha_pattern", dict(self.alpha_pattern))

    def rank_for(self, module_path: str) -> int:
        value = pattern_value(self.rank_pattern, module_path)
        return self.rank if value is None else int(value)

    def alpha_for(self, module_path: str) -> float:
        value = pattern_value(self.alpha_pattern, module_path)
        return float(self.alpha if value is None else value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        for key in ("target_modules", "exclude_modules", "layers"):
            if isinstance(data[key], tuple):
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AdapterConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def to_peft_dict(self, module_paths: Sequence[str]) -> dict[str, Any]:
        """peft ``LoraConfig`` fields for an adapter living exactly on ``module_paths``.

        The explicit module list is written (not the original selection rule): it is unambiguous and
        peft and diffusers both accept it.
        """
        return {
            "peft_type": "LORA",
            "r": self.rank,
            "lora_alpha": self.alpha,
            "target_modules": sorted(module_paths),
            "lora_dropout": self.dropout,
            "use_rslora": self.use_rslora,
            "bias": "none",
            "fan_in_fan_out": False,
            "init_lora_weights": True if self.init == "kaiming" else "gaussian",
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "use_dora": False,
            "lora_bias": False,
        }

    @classmethod
    def from_peft_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        """The inverse of :meth:`to_peft_dict` for peft/diffusers LoRA configs (plain LoRA only)."""
        if data.get("peft_type", "LORA") != "LORA":
            raise ValueError(
                f"only peft LoRA adapters can be loaded, got peft_type={data.get('peft_type')!r}"
            )
        unsupported = {
            key: data[key]
            for key in ("use_dora", "lora_bias", "fan_in_fan_out")
            if data.get(key) not in (None, False)
        }
        if data.get("bias", "none") != "none":
            unsupported["bias"] = data["bias"]
        if unsupported:
            raise ValueError(f"unsupported peft LoRA options {unsupported}: multi-lora implements plain LoRA")
        init = data.get("init_lora_weights", True)
        layers = data.get("layers_to_transform")
        return cls(
            rank=int(data["r"]),
            alpha=float(data.get("lora_alpha", data["r"])),
            target_modules=data["target_modules"],
            layers=[layers] if isinstance(layers, int) else layers,
            layers_pattern=data.get("layers_pattern"),
            exclude_modules=data.get("exclude_modules"),
            use_rslora=bool(data.get("use_rslora", False)),
            init="gaussian" if init == "gaussian" else "kaiming",
            dropout=float(data.get("lora_dropout", 0.0)),
            rank_pattern=dict(data.get("rank_pattern") or {}),
            alpha_pattern=dict(data.get("alpha_pattern") or {}),
        )
