"""LayerFlow's motion and content LoRAs on the transformer, through ``multi-lora``.

LayerFlow attaches a rank-8 *motion* LoRA and a rank-256 *content* LoRA (scaling ``alpha / r`` with
``alpha = 1``) to the q/k/v and output projections of every block (only blocks 5, 11, 17, 23, 29
are trained). The motion gate is per sample in training (1 for static-image samples, 0 for videos)
and 0 at inference; the content LoRA stays on. Adapters live in ``multi_lora.MultiLoraLinear``
wrappers and are saved beside the transformer weights in ``<transformer>/adapters/<name>/``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

import multi_lora as ml

MOTION = "motion"
CONTENT = "content"
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
#: Official: LoRA modules exist in all 30 blocks, trained in every 6th from block 5.
OFFICIAL_TRAINED_BLOCKS = tuple(range(5, 30, 6))
ADAPTERS_FOLDER = "adapters"
#: What official inference runs: motion off, content on.
INFERENCE_GATES = {MOTION: 0.0, CONTENT: 1.0}
FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def sat_module_to_diffusers(path: str) -> str | list[str]:
    """SAT LoRA host -> diffusers module(s): a fused ``query_key_value`` maps to its q, k, v projections."""
    parts = path.split(".")
    if len(parts) != 5 or parts[:2] != ["transformer", "layers"] or parts[3] != "attention":
        raise KeyError(path)
    block = f"transformer_blocks.{int(parts[2])}.attn1"
    if parts[4] == "query_key_value":
        return [f"{block}.to_q", f"{block}.to_k", f"{block}.to_v"]
    if parts[4] == "dense":
        return f"{block}.to_out.0"
    raise KeyError(path)


def add_layerflow_adapters(
    transformer: nn.Module,
    *,
    motion_rank: int = 8,
    content_rank: int = 256,
    alpha: float = 1.0,
    layers: Sequence[int] | None = None,
) -> None:
    """Fresh motion and content adapters on the attention projections (for training).

    ``layers=None`` covers every block; pass ``OFFICIAL_TRAINED_BLOCKS`` for the official placement
    of the trained ones. The motion adapter starts frozen and gated off; the content one trainable.
    """
    pattern = "transformer_blocks" if layers is not None else None
    for name, rank, trainable in ((MOTION, motion_rank, False), (CONTENT, content_rank, True)):
        config = ml.AdapterConfig(
            rank=rank,
            alpha=alpha,
            target_modules=list(ATTENTION_PROJECTIONS),
            layers=layers,
            layers_pattern=pattern,
            trainable=trainable,
        )
        ml.add_adapter(transformer, name, config)
    set_inference_gates(transformer)


def set_inference_gates(transformer: nn.Module) -> None:
    """Official inference gates for the adapters present: motion 0 (no kernel runs), content 1."""
    for name in ml.list_adapters(transformer):
        if name in INFERENCE_GATES:
            ml.set_scale(transformer, name, INFERENCE_GATES[name])


@contextlib.contextmanager
def merged_for_inference(transformer: nn.Module) -> Iterator[list[str]]:
    """For one inference call, run the adapters at the cost of the stock model; restore them after.

    Every enabled adapter whose gate is a constant non-zero scalar (official inference: content 1)
    is merged into the base weights with a kept copy, and every enabled adapter gated off (motion
    0) is disabled, so no LoRA kernel runs inside. On exit the adapters are unmerged (bit-exact,
    from the kept copies) and re-enabled, also when the body raises. Yields the merged names.

    Nothing changes while gradients are enabled or the model is training (a merged adapter would
    get no gradient, and training gates are per sample), nor for per-sample gates (not mergeable)
    and an adapter stays a branch where another mechanism owns the base weights
    (:func:`_weights_held_elsewhere`).
    """
    if torch.is_grad_enabled() or transformer.training:
        yield []
        return
    merged: list[str] = []
    disabled: list[str] = []
    try:
        for name in ml.list_adapters(transformer):
            layers = ml.adapter_layers(transformer, name).values()
            if not all(layer.enabled[name] for layer in layers) or any(
                name in layer.merged_adapters for layer in layers
            ):
                continue  # already out of the forward, or merged by the caller: leave it alone
            gate = ml.get_scale(transformer, name)
            if isinstance(gate, torch.Tensor):
                continue  # per-sample gate: must stay a branch
            if gate == 0.0:
                ml.disable_adapter(transformer, name)
                disabled.append(name)
            elif not _weights_held_elsewhere(transformer, [layer.base_layer.weight for layer in layers]):
                ml.merge_adapter(transformer, name, keep_copy=True)
                merged.append(name)
        yield merged
    finally:
        for name in reversed(merged):
            ml.unmerge_adapter(transformer, name)
        for name in disabled:
            ml.enable_adapter(transformer, name)


def _weights_held_elsewhere(transformer: nn.Module, weights: list[torch.Tensor]) -> bool:
    """Base weights a merge must not touch: on the meta device (sequential CPU offload), in float8
    storage (layerwise casting: the merge would round to 3 mantissa bits) or group offloaded (with
    streams the onload copies pinned tensors taken when offloading was enabled, not the module's)."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    if any(weight.is_meta or weight.dtype in FLOAT8 for weight in weights):
        return True
    return _is_group_offload_enabled(transformer)


def attach_lora_factors(transformer: nn.Module, factors: Mapping[str, Mapping[str, ml.ModuleLora]]) -> None:
    """Create one adapter per entry of ``factors`` (all validated first by multi-lora), inference gates set."""
    for name, modules in factors.items():
        ml.attach_adapter(transformer, name, ml.ImportedAdapter(dict(modules)))
    set_inference_gates(transformer)


def official_lora_factors(sat_state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, ml.ModuleLora]]:
    """The official LoRAs as ``{adapter: {diffusers module: ModuleLora}}`` without touching a model."""
    imported = ml.from_layerflow_official(sat_state_dict, rename=sat_module_to_diffusers)
    return {name: dict(adapter.modules) for name, adapter in imported.items()}


def merge_lora_into_state_dict(
    state_dict: dict[str, torch.Tensor], factors: Mapping[str, ml.ModuleLora]
) -> None:
    """``W += (alpha / r) B A`` for every module, computed in float64 and cast back (in place)."""
    for module, lora in factors.items():
        key = f"{module}.weight"
        if key not in state_dict:
            raise KeyError(f"LoRA for {module}, whose base weight {key} is missing")
        base = state_dict[key]
        if (lora.lora_B.shape[0], lora.lora_A.shape[1]) != tuple(base.shape):
            raise ValueError(
                f"LoRA for {module}: lora_A {tuple(lora.lora_A.shape)} / lora_B {tuple(lora.lora_B.shape)} "
                f"do not fit its weight {tuple(base.shape)}"
            )
        delta = (lora.lora_B.double() @ lora.lora_A.double()) * (lora.alpha / lora.rank)
        state_dict[key] = (base.double() + delta).to(base.dtype)


@contextlib.contextmanager
def bare_linears(model: nn.Module) -> Iterator[None]:
    """Temporarily put every ``MultiLoraLinear``'s base ``nn.Linear`` back in its place.

    Inside, ``state_dict()`` has the stock parameter names, so the base weights save and load like
    a model without adapters; the adapters are saved on their own.
    """
    wrapped = [
        (name, module) for name, module in model.named_modules() if isinstance(module, ml.MultiLoraLinear)
    ]
    merged = [name for name, module in wrapped if module.merged_adapters]
    if merged:
        raise RuntimeError(f"unmerge the adapters first: merged in {merged[:5]} (saving would bake them in)")
    for name, module in wrapped:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.base_layer)
    try:
        yield
    finally:
        for name, module in wrapped:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module)


def save_adapters(model: nn.Module, folder: str | os.PathLike[str]) -> list[str]:
    """Every adapter of ``model`` into ``folder/<name>/`` (multi-lora native format, safetensors)."""
    names = ml.list_adapters(model)
    for name in names:
        ml.save_adapter(model, name, Path(folder) / name, format="native")
    return names


def load_adapters(model: nn.Module, folder: str | os.PathLike[str]) -> list[str]:
    """Load every ``folder/<name>/`` adapter (frozen), then set the inference gates."""
    names = sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in names:
        ml.load_adapter(model, Path(folder) / name, name)
    set_inference_gates(model)
    return names
