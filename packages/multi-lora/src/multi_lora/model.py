"""Model-level API: pick target ``nn.Linear`` modules, wrap them, and switch adapters by name.

The functions take any ``nn.Module`` and change it in place (targets are replaced by
:class:`MultiLoraLinear`); nothing wraps the model. Each adapter has one record (its config, its
shared gate and its layers) kept on the model under ``MULTI_LORA_ATTRIBUTE``, so switching an
adapter costs one operation per layer of *that* adapter, and setting a gate costs one in-place copy.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import AdapterConfig
from .gates import AdapterGate, GateValue
from .layer import MultiLoraLinear

MULTI_LORA_ATTRIBUTE = "_multi_lora_adapters"


@dataclass
class AdapterRecord:
    """One adapter of a model: its config, its gate (shared by its layers) and its layers by path."""

    config: AdapterConfig
    gate: AdapterGate
    layers: dict[str, MultiLoraLinear] = field(default_factory=dict)


def _records(model: nn.Module) -> dict[str, AdapterRecord]:
    records = getattr(model, MULTI_LORA_ATTRIBUTE, None)
    if records is None:
        records = {}
        setattr(model, MULTI_LORA_ATTRIBUTE, records)
    return records


def _record(model: nn.Module, name: str) -> AdapterRecord:
    records = getattr(model, MULTI_LORA_ATTRIBUTE, {})
    if name not in records:
        raise KeyError(f"model has no adapter {name!r}; adapters: {sorted(records)}")
    return records[name]


# ------------------------------------------------------------------------------------ targets


def _linear_candidates(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(path, module)`` of every Linear or MultiLoraLinear, not descending into MultiLoraLinear."""

    def walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
        for child_name, child in module.named_children():
            path = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, (MultiLoraLinear, nn.Linear)):
                yield path, child
            else:
                yield from walk(child, path)

    yield from walk(model, "")


def _name_matches(path: str, names: str | Sequence[str]) -> bool:
    if isinstance(names, str):
        return re.fullmatch(names, path) is not None
    return any(path == n or path.endswith("." + n) for n in names)


def layer_index(path: str, layers_pattern: str | None) -> int | None:
    """The layer index of a module path: the number after ``layers_pattern``, or the first number."""
    parts = path.split(".")
    if layers_pattern is None:
        return next((int(p) for p in parts if p.isdigit()), None)
    for container, child in zip(parts, parts[1:]):
        if container == layers_pattern and child.isdigit():
            return int(child)
    return None


def select_targets(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Paths of the Linear modules ``config`` selects; raises with the reason when none is valid."""
    targets = config.target_modules
    not_linear = [
        path
        for path, module in model.named_modules()
        if path
        and _name_matches(path, targets)
        and not isinstance(module, (nn.Linear, MultiLoraLinear))
        and not isinstance(module, (nn.ModuleList, nn.Sequential, nn.ModuleDict))
        and ".lora_" not in path
        and ".base_layer" not in path
    ]
    if not_linear:
        raise TypeError(
            f"target_modules={targets!r} matches modules that are not nn.Linear (multi-lora wraps Linear "
            f"layers only): {not_linear[:10]}"
        )
    matched = [path for path, _ in _linear_candidates(model) if _name_matches(path, targets)]
    if config.exclude_modules is not None:
        matched = [p for p in matched if not _name_matches(p, config.exclude_modules)]
    if config.layers is not None:
        matched = [p for p in matched if layer_index(p, config.layers_pattern) in config.layers]
    if not matched:
        some = [path for path, _ in _linear_candidates(model)][:12]
        raise ValueError(
            f"no nn.Linear matches target_modules={targets!r}, exclude_modules={config.exclude_modules!r}, "
            f"layers={config.layers!r}, layers_pattern={config.layers_pattern!r}; Linear modules include {some}"
        )
    return matched


def _wrap(model: nn.Module, path: str) -> MultiLoraLinear:
    """The MultiLoraLinear at ``path``, replacing a plain Linear there if needed."""
    module = model.get_submodule(path)
    if isinstance(module, MultiLoraLinear):
        return module
    if not isinstance(module, nn.Linear):
        raise TypeError(f"module {path!r} is a {type(module).__name__}, not an nn.Linear")
    parent_path, _, child = path.rpartition(".")
    wrapped = MultiLoraLinear(module).train(module.training)  # a new module would start in train mode
    setattr(model.get_submodule(parent_path), child, wrapped)
    return wrapped


def _unwrap(model: nn.Module, path: str, layer: MultiLoraLinear) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path), child, layer.base_layer)


# ---------------------------------------------------------------------------------- creation


def _check_new_name(model: nn.Module, name: str) -> None:
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"adapter name must be a non-empty string without dots, got {name!r}")
    if name in _records(model):
        raise ValueError(f"model already has an adapter named {name!r}")


def add_adapter_at(
    model: nn.Module,
    name: str,
    config: AdapterConfig,
    paths: list[str],
    ranks: Mapping[str, int] | None = None,
    alphas: Mapping[str, float] | None = None,
) -> AdapterRecord:
    """Create adapter ``name`` exactly on ``paths`` (per-module rank/alpha overrides allowed).

    All paths are validated before the model is touched, so a bad path changes nothing.
    """
    _check_new_name(model, name)
    problems = []
    for path in paths:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            problems.append(f"{path!r}: no such module")
            continue
        if not isinstance(module, (nn.Linear, MultiLoraLinear)):
            problems.append(f"{path!r}: a {type(module).__name__}, not an nn.Linear")
    if problems:
        raise ValueError(f"cannot add adapter {name!r}: " + "; ".join(problems))
    reference = next(model.parameters(), None)
    gate = AdapterGate(device=reference.device if reference is not None else None)
    record = AdapterRecord(config=config, gate=gate)
    for path in paths:
        layer = _wrap(model, path)
        layer.add_adapter(
            name,
            rank=(ranks or {}).get(path, config.rank_for(path)),
            alpha=(alphas or {}).get(path, config.alpha_for(path)),
            gate=gate,
            use_rslora=config.use_rslora,
            init=config.init,
            dropout=config.dropout,
            trainable=config.trainable,
            gate_mode=config.gate_mode,
        )
        record.layers[path] = layer
    _records(model)[name] = record
    return record


def add_adapter(
    model: nn.Module, name: str, config: AdapterConfig | None = None, **options: Any
) -> AdapterConfig:
    """Add adapter ``name`` to the Linear layers selected by its config; returns the config.

    Pass an :class:`AdapterConfig` or its fields as keywords (``rank=8, alpha=1.0,
    target_modules=["to_q", "to_k", "to_v"], layers=range(5, 30, 6), layers_pattern="transformer_blocks"``).
    The adapter starts enabled with gate 1.0; its trainability is ``config.trainable``. Other parameters
    of the model are not touched (freeze the base model yourself, e.g. ``model.requires_grad_(False)``
    before adding adapters).
    """
    if config is None:
        config = AdapterConfig(**options)
    elif options:
        raise TypeError(f"pass either an AdapterConfig or its fields, not both (got extra {sorted(options)})")
    _check_new_name(model, name)
    add_adapter_at(model, name, config, select_targets(model, config))
    return config


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; a layer left without adapters is unwrapped back to its Linear."""
    record = _record(model, name)
    merged = [path for path, layer in record.layers.items() if name in layer.merged_adapters]
    if merged:
        raise RuntimeError(f"adapter {name!r} is merged in {merged[:5]}; call unmerge_adapter first")
    for path, layer in record.layers.items():
        layer.delete_adapter(name)
        if not layer.adapter_names:
            _unwrap(model, path, layer)
    del _records(model)[name]


# --------------------------------------------------------------------------------- switching


def list_adapters(model: nn.Module) -> list[str]:
    return list(getattr(model, MULTI_LORA_ATTRIBUTE, {}))


def get_adapter_config(model: nn.Module, name: str) -> AdapterConfig:
    return _record(model, name).config


def adapter_layers(model: nn.Module, name: str) -> dict[str, MultiLoraLinear]:
    """``{module path: layer}`` of adapter ``name``."""
    return dict(_record(model, name).layers)


def _refuse_if_merged(record: AdapterRecord, name: str, action: str) -> None:
    if any(name in layer.merged_adapters for layer in record.layers.values()):
        raise RuntimeError(f"cannot {action} adapter {name!r} while it is merged; call unmerge_adapter first")


def set_scale(model: nn.Module, name: str, value: GateValue) -> None:
    """Set the gate of adapter ``name``: a float (0.0 skips the branch) or a per-sample ``[B]`` tensor.

    The value multiplies the static ``alpha / r`` scaling and persists until set again (see
    :mod:`multi_lora.gates` for the batch rule).
    """
    record = _record(model, name)
    _refuse_if_merged(record, name, "change the gate of")
    record.gate.set(value)


def get_scale(model: nn.Module, name: str) -> float | torch.Tensor:
    return _record(model, name).gate.value()


def _set_enabled(model: nn.Module, name: str, enabled: bool) -> None:
    record = _record(model, name)
    _refuse_if_merged(record, name, "enable or disable")
    for layer in record.layers.values():
        layer.enabled[name] = enabled


def enable_adapter(model: nn.Module, name: str) -> None:
    """Include adapter ``name`` in the forward. Its ``requires_grad`` is not changed."""
    _set_enabled(model, name, True)


def disable_adapter(model: nn.Module, name: str) -> None:
    """Drop adapter ``name`` from the forward (no kernels run for it). ``requires_grad`` is unchanged."""
    _set_enabled(model, name, False)


def set_trainable(model: nn.Module, name: str, trainable: bool) -> None:
    """Set ``requires_grad`` of every parameter of adapter ``name``; nothing else changes."""
    for layer in _record(model, name).layers.values():
        layer.set_trainable(name, trainable)


def trainable_parameters(model: nn.Module, name: str | None = None) -> dict[str, nn.Parameter]:
    """Adapter parameters with ``requires_grad`` (of ``name`` or of all adapters), by full name."""
    records = getattr(model, MULTI_LORA_ATTRIBUTE, {})
    names = [name] if name is not None else list(records)
    found: dict[str, nn.Parameter] = {}
    for adapter in names:
        for path, layer in _record(model, adapter).layers.items():
            for attribute in layer.adapter_layer_names:
                for param_name, param in getattr(layer, attribute)[adapter].named_parameters():
                    if param.requires_grad:
                        found[f"{path}.{attribute}.{adapter}.{param_name}"] = param
    return found


# -------------------------------------------------------------------------------------- merge


def merge_adapter(model: nn.Module, name: str, *, keep_copy: bool = False) -> None:
    """Fold adapter ``name`` (times its scalar gate) into the base weights, delta computed in fp32.

    ``keep_copy`` keeps each base weight as it was, so :func:`unmerge_adapter` restores it bit-exactly;
    without it unmerge subtracts the delta (exact to fp32 rounding). Per-sample gates cannot be merged.
    """
    record = _record(model, name)
    if record.gate.kind == "per_sample":
        raise ValueError(f"adapter {name!r} has a per-sample gate; only a scalar gate can be merged")
    layers = record.layers.values()
    if not all(layer.enabled[name] for layer in layers):
        raise RuntimeError(f"adapter {name!r} is disabled; enable it before merging")
    if any(name in layer.merged_adapters for layer in layers):
        raise RuntimeError(f"adapter {name!r} is already merged")
    for layer in layers:
        layer.merge(name, keep_copy=keep_copy)


def unmerge_adapter(model: nn.Module, name: str) -> None:
    """Take adapter ``name`` back out of the base weights (see :func:`merge_adapter`)."""
    record = _record(model, name)
    if not all(name in layer.merged_adapters for layer in record.layers.values()):
        raise RuntimeError(f"adapter {name!r} is not merged")
    for layer in record.layers.values():
        layer.unmerge(name)


# --------------------------------------------------------------------------------- weights


def adapter_state_dict(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """peft-style weights of adapter ``name``: ``<path>.lora_A.weight`` / ``<path>.lora_B.weight``.

    The adapter name is stripped, as in peft's saved files; tensors are detached, not copied.
    """
    state: dict[str, torch.Tensor] = {}
    for path, layer in _record(model, name).layers.items():
        lora_a, lora_b = layer.lora_pair(name)
        state[f"{path}.lora_A.weight"] = lora_a.weight.detach()
        state[f"{path}.lora_B.weight"] = lora_b.weight.detach()
    return state
