"""Save and load adapters (safetensors) in peft, diffusers and native formats, and attach imports.

Every format is a directory:

* ``"peft"``: ``adapter_model.safetensors`` (keys ``base_model.model.<path>.lora_A.weight``) and
  ``adapter_config.json``; loads with ``peft.PeftModel.from_pretrained(base, directory)``.
* ``"diffusers"``: ``pytorch_lora_weights.safetensors`` with keys ``<prefix>.<path>.lora_A.weight``
  and the ``lora_adapter_metadata`` header (the ``LoraConfig`` fields, prefixed like the keys) that
  diffusers needs to use ``lora_alpha``; loads with ``model.load_lora_adapter(directory,
  weight_name="pytorch_lora_weights.safetensors", prefix="transformer")`` or a pipeline's
  ``load_lora_weights``.
* ``"native"``: ``multi_lora_adapter.safetensors`` with peft-style keys and a ``multi_lora`` header
  holding the full :class:`AdapterConfig`, per-module rank/alpha and the scalar gate.

Gates are runtime state: peft and diffusers files carry only weights and alpha (a scalar gate other
than 1 is not baked in); the native header records a scalar gate.

Writes go to a temporary file that is renamed into place; loads validate every module and shape
against the model before anything is created.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .config import AdapterConfig
from .importers import (
    DIFFUSERS_METADATA_KEY,
    ImportedAdapter,
    Rename,
    from_animatediff,
    from_diffusers,
    from_layerflow_official,
    from_native,
    from_peft,
)
from .layer import MultiLoraLinear
from .model import (
    adapter_layers,
    adapter_state_dict,
    add_adapter_at,
    delete_adapter,
    get_adapter_config,
    get_scale,
    set_scale,
)

SaveFormat = Literal["peft", "diffusers", "native"]
LoadFormat = Literal["auto", "peft", "diffusers", "native", "animatediff"]

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
NATIVE_WEIGHTS = "multi_lora_adapter.safetensors"
NATIVE_METADATA_KEY = "multi_lora"


# --------------------------------------------------------------------------------------- files


def _apply_umask(path: str) -> None:
    """Give ``path`` the mode a plain ``open`` would have, not ``mkstemp``'s private 0600."""
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _atomic_write(target: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` next to ``target`` and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        _apply_umask(temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _save_tensors(target: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write(target, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def _save_json(target: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=True)

    def write(temporary: str) -> None:
        Path(temporary).write_text(text)

    _atomic_write(target, write)


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a ``.safetensors`` file, or a torch checkpoint read safely.

    Torch checkpoints are read with ``weights_only=True``; a ``{"module": state_dict}`` wrapper (SAT /
    DeepSpeed) is unwrapped.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {file}")
    if file.suffix == ".safetensors":
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return load_file(str(file)), metadata
    loaded = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping) and "module" in loaded and isinstance(loaded["module"], Mapping):
        loaded = loaded["module"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{file}: expected a state dict of tensors")
    return dict(loaded), {}


# ---------------------------------------------------------------------------------------- save


def _module_values(model: nn.Module, name: str) -> dict[str, tuple[int, float]]:
    return {
        path: (layer.r[name], layer.lora_alpha[name]) for path, layer in adapter_layers(model, name).items()
    }


def _peft_dict(model: nn.Module, name: str) -> dict[str, Any]:
    """peft ``LoraConfig`` fields describing the adapter exactly as its layers hold it."""
    values = _module_values(model, name)
    rank = collections.Counter(r for r, _ in values.values()).most_common(1)[0][0]
    alpha = collections.Counter(a for _, a in values.values()).most_common(1)[0][0]
    config = get_adapter_config(model, name)
    exact = AdapterConfig(
        rank=rank,
        alpha=alpha,
        target_modules=sorted(values),
        use_rslora=config.use_rslora,
        init=config.init,
        dropout=config.dropout,
        rank_pattern={p: r for p, (r, _) in values.items() if r != rank},
        alpha_pattern={p: a for p, (_, a) in values.items() if a != alpha},
    )
    return exact.to_peft_dict(sorted(values))


def _weights(model: nn.Module, name: str, key_prefix: str) -> dict[str, torch.Tensor]:
    return {f"{key_prefix}{key}": value for key, value in adapter_state_dict(model, name).items()}


def save_adapter(
    model: nn.Module,
    name: str,
    path: str | os.PathLike[str],
    format: SaveFormat = "peft",
    *,
    prefix: str = "transformer",
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write adapter ``name`` into directory ``path`` in ``format``; returns the weights file.

    ``prefix`` is the diffusers component the keys are filed under (``""``: unprefixed, as diffusers'
    model-level ``save_lora_adapter`` writes). ``base_model_name_or_path`` goes into peft's config.
    """
    if format not in ("peft", "diffusers", "native"):
        raise ValueError(f"format must be 'peft', 'diffusers' or 'native', got {format!r}")
    directory = Path(path)
    if directory.is_file():
        raise ValueError(f"{directory} is a file; adapters are saved into a directory")
    if format == "peft":
        peft_dict = _peft_dict(model, name)
        peft_dict.update(base_model_name_or_path=base_model_name_or_path, inference_mode=True, task_type=None)
        target = directory / PEFT_WEIGHTS
        _save_tensors(target, _weights(model, name, "base_model.model."), {"format": "pt"})
        _save_json(directory / PEFT_CONFIG, peft_dict)
    elif format == "diffusers":
        dotted = f"{prefix}." if prefix else ""
        header = {f"{dotted}{k}": v for k, v in _peft_dict(model, name).items()}
        metadata = {"format": "pt", DIFFUSERS_METADATA_KEY: json.dumps(header, indent=2, sort_keys=True)}
        target = directory / DIFFUSERS_WEIGHTS
        _save_tensors(target, _weights(model, name, dotted), metadata)
    else:  # "native"
        gate = get_scale(model, name)
        header = {
            "config": get_adapter_config(model, name).to_dict(),
            "modules": {p: {"rank": r, "alpha": a} for p, (r, a) in _module_values(model, name).items()},
            "gate": gate if isinstance(gate, float) else None,
        }
        target = directory / NATIVE_WEIGHTS
        _save_tensors(
            target, _weights(model, name, ""), {"format": "pt", NATIVE_METADATA_KEY: json.dumps(header)}
        )
    return target


# ---------------------------------------------------------------------------------------- load


def attach_adapter(
    model: nn.Module,
    name: str,
    imported: ImportedAdapter,
    *,
    config: AdapterConfig | None = None,
    trainable: bool = False,
) -> None:
    """Create adapter ``name`` from ``imported`` after checking every module and shape.

    On any mismatch nothing is created and the error lists every offending module. ``config``
    (default: derived from ``imported``) supplies the options; its ``trainable`` is replaced by
    ``trainable`` (loaded adapters start frozen, as in peft).
    """
    problems: list[str] = []
    for path, lora in imported.modules.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            problems.append(f"{path}: no such module in the model")
            continue
        base = module.base_layer if isinstance(module, MultiLoraLinear) else module
        if not isinstance(base, nn.Linear):
            problems.append(f"{path}: a {type(module).__name__}, not an nn.Linear")
            continue
        expected_a = (lora.rank, base.in_features)
        expected_b = (base.out_features, lora.rank)
        if tuple(lora.lora_A.shape) != expected_a or tuple(lora.lora_B.shape) != expected_b:
            problems.append(
                f"{path}: lora_A {tuple(lora.lora_A.shape)} / lora_B {tuple(lora.lora_B.shape)}, expected "
                f"{expected_a} / {expected_b} for Linear({base.in_features} -> {base.out_features})"
            )
    if problems:
        raise ValueError(f"cannot load adapter {name!r} ({len(problems)} problems): " + "; ".join(problems))
    base_config = config if config is not None else imported.config()
    base_config = AdapterConfig.from_dict({**base_config.to_dict(), "trainable": trainable})
    paths = sorted(imported.modules)
    record = add_adapter_at(
        model,
        name,
        base_config,
        paths,
        ranks={p: m.rank for p, m in imported.modules.items()},
        alphas={p: m.alpha for p, m in imported.modules.items()},
    )
    try:
        with torch.no_grad():
            for path, layer in record.layers.items():
                lora_a, lora_b = layer.lora_pair(name)
                lora_a.weight.copy_(imported.modules[path].lora_A)
                lora_b.weight.copy_(imported.modules[path].lora_B)
        if imported.scale is not None:
            set_scale(model, name, imported.scale)
    except BaseException:
        delete_adapter(model, name)
        raise


def _detect_format(path: Path) -> tuple[LoadFormat, Path]:
    if path.is_dir():
        for format_name, file_name in (
            ("native", NATIVE_WEIGHTS),
            ("peft", PEFT_CONFIG),
            ("diffusers", DIFFUSERS_WEIGHTS),
        ):
            if (path / file_name).is_file():
                return format_name, path  # type: ignore[return-value]
        raise ValueError(f"{path}: none of {NATIVE_WEIGHTS}, {PEFT_CONFIG}, {DIFFUSERS_WEIGHTS} found")
    if not path.is_file():
        raise FileNotFoundError(f"no such file or directory: {path}")
    tensors, metadata = read_state_dict(path)
    if NATIVE_METADATA_KEY in metadata:
        return "native", path
    if all(k.startswith("base_model.model.") for k in tensors) and path.with_name(PEFT_CONFIG).is_file():
        return "peft", path
    if any("_lora.down." in k or "_lora.up." in k for k in tensors):
        return "animatediff", path
    if DIFFUSERS_METADATA_KEY in metadata or any(".lora_A." in k or ".lora.down." in k for k in tensors):
        return "diffusers", path
    raise ValueError(f"{path}: cannot tell the LoRA format from its keys (first keys: {list(tensors)[:5]})")


def _weights_file(path: Path, file_name: str) -> Path:
    return path / file_name if path.is_dir() else path


def load_adapter(
    model: nn.Module,
    path: str | os.PathLike[str],
    name: str,
    *,
    format: LoadFormat = "auto",
    prefix: str = "transformer",
    rename: Rename | None = None,
    scale: float = 1.0,
    trainable: bool = False,
) -> None:
    """Load an adapter directory or file into ``model`` as adapter ``name``.

    ``format="auto"`` recognises the three saved formats (directories or their weight files), diffusers
    LoRA files and AnimateDiff ``to_q_lora.down/up`` files. ``prefix``: the diffusers component;
    ``rename``: maps the file's module paths to ``model``'s; ``scale``: AnimateDiff's alpha (it
    becomes the gate); ``trainable``: initial ``requires_grad`` (default frozen, as peft loads).
    LayerFlow's official checkpoints need a rename per partition: use :func:`load_layerflow_official`.
    """
    source = Path(path)
    if format == "auto":
        format, source = _detect_format(source)
    config: AdapterConfig | None = None
    if format == "peft":
        config_file = source / PEFT_CONFIG if source.is_dir() else source.with_name(PEFT_CONFIG)
        if not config_file.is_file():
            raise FileNotFoundError(f"peft adapter without {PEFT_CONFIG}: {config_file}")
        tensors, _ = read_state_dict(_weights_file(source, PEFT_WEIGHTS))
        imported = from_peft(tensors, json.loads(config_file.read_text()), rename=rename)
    elif format == "diffusers":
        tensors, metadata = read_state_dict(_weights_file(source, DIFFUSERS_WEIGHTS))
        raw = metadata.get(DIFFUSERS_METADATA_KEY)
        imported = from_diffusers(tensors, json.loads(raw) if raw else None, prefix=prefix, rename=rename)
    elif format == "animatediff":
        tensors, _ = read_state_dict(source)
        imported = from_animatediff(tensors, scale=scale, rename=rename)
    elif format == "native":
        tensors, metadata = read_state_dict(_weights_file(source, NATIVE_WEIGHTS))
        if NATIVE_METADATA_KEY not in metadata:
            raise ValueError(f"{source}: no '{NATIVE_METADATA_KEY}' header; not a multi-lora native file")
        imported, config = from_native(tensors, json.loads(metadata[NATIVE_METADATA_KEY]), rename=rename)
    else:
        raise ValueError(f"unknown format {format!r}")
    attach_adapter(model, name, imported, config=config, trainable=trainable)


def load_layerflow_official(
    model: nn.Module,
    state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike[str],
    *,
    rename: Rename,
    adapters: Mapping[str, tuple[str, str]] | None = None,
    alpha: float = 1.0,
    drop_zero: bool = True,
    trainable: bool = False,
) -> list[str]:
    """Load LayerFlow's official ``matrix_A/B`` (motion) and ``matrix_C/D`` (content) LoRAs.

    ``rename`` maps SAT module paths to ``model``'s, a fused ``query_key_value`` to its q/k/v modules
    (see :func:`multi_lora.importers.from_layerflow_official`). All adapters are validated before any
    is created. Returns the names of the adapters created.
    """
    if isinstance(state_dict_or_path, Mapping):
        state_dict = dict(state_dict_or_path)
    else:
        state_dict, _ = read_state_dict(state_dict_or_path)
    kwargs: dict[str, Any] = {"rename": rename, "alpha": alpha, "drop_zero": drop_zero}
    if adapters is not None:
        kwargs["adapters"] = adapters
    imported = from_layerflow_official(state_dict, **kwargs)
    created: list[str] = []
    try:
        for adapter_name, adapter in imported.items():
            attach_adapter(model, adapter_name, adapter, trainable=trainable)
            created.append(adapter_name)
    except BaseException:
        for adapter_name in created:
            delete_adapter(model, adapter_name)
        raise
    return created
