"""Turn foreign LoRA state dicts into one neutral form, :class:`ImportedAdapter`.

Each importer only parses and renames; :func:`multi_lora.io.attach_adapter` then checks every module
and shape against the model before changing anything. Module renaming is always supplied by the
caller (a function or a mapping): this package knows no model's module names.

Formats:

* peft: ``[base_model.model.]<path>.lora_A.weight`` ``[r, in]`` / ``.lora_B.weight`` ``[out, r]``,
  scaling ``lora_alpha / r`` from ``adapter_config.json``.
* diffusers: the same keys behind a component prefix (``transformer.``), alpha from the
  ``lora_adapter_metadata`` header; without it (and without kohya ``.alpha`` keys) diffusers assumes
  ``alpha = r`` (scale 1.0), and so do we. Older key styles (``.lora.down/.up``,
  ``.lora_linear_layer.down/.up``, ``processor.to_q_lora.down/.up``) are converted as diffusers does.
* AnimateDiff: ``...processor.to_{q,k,v,out}_lora.{down,up}.weight``; AnimateDiff merges
  ``W += scale * up @ down`` (no ``/ r``), so the adapter gets ``alpha = r`` and the gate ``scale``.
* LayerFlow official (SAT): per wrapped linear, ``matrix_A.{p}`` ``[r, in]`` / ``matrix_B.{p}``
  ``[out / P, r]`` (motion) and ``matrix_C.{p}`` / ``matrix_D.{p}`` (content), one independent pair per
  output partition ``p`` (``P = 3`` for the fused ``query_key_value``, 1 for ``dense``); the partition
  outputs are concatenated in ``[q | k | v]`` order, scaling ``lora_alpha / r`` with ``lora_alpha = 1``.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .config import AdapterConfig

#: Maps a source module path to the model's module path; a fused source module maps to a sequence
#: of paths, one per output partition, in output order. ``None`` from a callable is an error.
Rename = Callable[[str], "str | Sequence[str] | None"] | Mapping[str, "str | Sequence[str]"]

#: LayerFlow's official parameter names: adapter name -> (down matrix, up matrix).
LAYERFLOW_OFFICIAL_ADAPTERS: dict[str, tuple[str, str]] = {
    "motion": ("matrix_A", "matrix_B"),
    "content": ("matrix_C", "matrix_D"),
}
LAYERFLOW_OFFICIAL_PREFIX = "model.diffusion_model."
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"


@dataclass
class ModuleLora:
    """One module's LoRA pair and its alpha (scaling ``alpha / r``)."""

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])


@dataclass
class ImportedAdapter:
    """A parsed adapter: per-module weights, the options to build it with, and an implied gate."""

    modules: dict[str, ModuleLora]
    use_rslora: bool = False
    dropout: float = 0.0
    scale: float | None = None

    def config(self, **options: Any) -> AdapterConfig:
        """An :class:`AdapterConfig` naming exactly these modules (most common rank/alpha as defaults).

        ``options`` are further config fields (``trainable``, ``gate_mode``).
        """
        rank = collections.Counter(m.rank for m in self.modules.values()).most_common(1)[0][0]
        alpha = collections.Counter(m.alpha for m in self.modules.values()).most_common(1)[0][0]
        return AdapterConfig(
            rank=rank,
            alpha=alpha,
            target_modules=sorted(self.modules),
            use_rslora=self.use_rslora,
            dropout=self.dropout,
            rank_pattern={p: m.rank for p, m in self.modules.items() if m.rank != rank},
            alpha_pattern={p: m.alpha for p, m in self.modules.items() if m.alpha != alpha},
            **options,
        )


# ------------------------------------------------------------------------------------- helpers


def rename_module(path: str, rename: Rename | None) -> list[str]:
    """The model path(s) for source module ``path`` (one per output partition)."""
    if rename is None:
        return [path]
    target: str | Sequence[str] | None
    if isinstance(rename, Mapping):
        if path not in rename:
            raise KeyError(path)
        target = rename[path]
    else:
        target = rename(path)
    if target is None:
        raise KeyError(path)
    return [target] if isinstance(target, str) else list(target)


def _renamed(pairs: Mapping[str, ModuleLora], rename: Rename | None) -> dict[str, ModuleLora]:
    """Apply ``rename`` to single-partition modules; every failure is reported at once."""
    renamed: dict[str, ModuleLora] = {}
    problems: list[str] = []
    for path, lora in pairs.items():
        try:
            targets = rename_module(path, rename)
        except KeyError:
            problems.append(f"{path!r}: the rename gives no module for it")
            continue
        if len(targets) != 1:
            parts = split_fused_lora([lora.lora_A], [lora.lora_B], len(targets))
            renamed.update({t: ModuleLora(a, b, lora.alpha) for t, (a, b) in zip(targets, parts)})
        else:
            renamed[targets[0]] = lora
    if problems:
        raise ValueError("cannot rename LoRA modules: " + "; ".join(problems))
    return renamed


def split_fused_lora(
    downs: Sequence[torch.Tensor], ups: Sequence[torch.Tensor], parts: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split the LoRA of a fused projection (``[q | k | v]`` outputs) into ``parts`` separate LoRAs.

    Two layouts exist. One pair per partition (LayerFlow's SAT ``LoraLinear``: ``A_p`` ``[r, in]``,
    ``B_p`` ``[out / P, r]``) splits trivially. One shared pair (a LoRA on the fused Linear: ``A``
    ``[r, in]``, ``B`` ``[out, r]``) becomes ``parts`` pairs sharing ``A`` with ``B`` cut into row
    blocks; both give the same outputs as the fused module.
    """
    if len(downs) != len(ups):
        raise ValueError(f"{len(downs)} down matrices but {len(ups)} up matrices")
    if len(downs) == parts:
        return list(zip(downs, ups))
    if len(downs) == 1:
        down, up = downs[0], ups[0]
        if up.shape[0] % parts:
            raise ValueError(f"cannot split an up matrix of shape {tuple(up.shape)} into {parts} row blocks")
        return [(down, block) for block in up.chunk(parts, dim=0)]
    raise ValueError(f"a fused LoRA with {len(downs)} pairs cannot be split into {parts} modules")


def _pairs_from_peft_keys(state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, tuple[Any, Any]]:
    """``{module path: (lora_A, lora_B)}`` from ``<path>.lora_A.weight`` keys; errors list bad keys."""
    pairs: dict[str, list[Any]] = {}
    unknown = []
    for key, tensor in state_dict.items():
        match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", key)
        if match is None:
            unknown.append(key)
            continue
        pairs.setdefault(match.group(1), [None, None])["AB".index(match.group(2))] = tensor
    if unknown:
        raise ValueError(
            f"{source}: keys that are not plain LoRA weights (lora_A/lora_B .weight): {unknown[:10]}"
        )
    incomplete = [p for p, (a, b) in pairs.items() if a is None or b is None]
    if incomplete:
        raise ValueError(f"{source}: modules missing their lora_A or lora_B weight: {incomplete[:10]}")
    bad = [
        f"{p}: lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)}"
        for p, (a, b) in pairs.items()
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]
    ]
    if bad:
        raise ValueError(f"{source}: lora_A must be [r, in] and lora_B [out, r] with the same r: {bad[:10]}")
    return {p: (a, b) for p, (a, b) in pairs.items()}


def _strip_prefix(
    state_dict: Mapping[str, torch.Tensor], prefix: str, source: str
) -> dict[str, torch.Tensor]:
    if not prefix:
        return dict(state_dict)
    stripped = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    if not stripped:
        raise ValueError(f"{source}: no key starts with {prefix!r} (first keys: {list(state_dict)[:5]})")
    return stripped


# ------------------------------------------------------------------------------------- formats


def from_peft(
    state_dict: Mapping[str, torch.Tensor], peft_config: Mapping[str, Any], *, rename: Rename | None = None
) -> ImportedAdapter:
    """A peft LoRA (``adapter_model.safetensors`` tensors + ``adapter_config.json`` dict)."""
    config = AdapterConfig.from_peft_dict(peft_config)
    prefix = "base_model.model." if all(k.startswith("base_model.model.") for k in state_dict) else ""
    pairs = _pairs_from_peft_keys(_strip_prefix(state_dict, prefix, "peft adapter"), "peft adapter")
    modules = {path: ModuleLora(a, b, config.alpha_for(path)) for path, (a, b) in pairs.items()}
    return ImportedAdapter(_renamed(modules, rename), use_rslora=config.use_rslora, dropout=config.dropout)


_DIFFUSERS_KEY_STYLES = (
    (re.compile(r"\.processor\."), "."),
    (re.compile(r"\.to_out_lora\.(down|up)\."), r".to_out.0.lora.\1."),
    (re.compile(r"\.(to_q|to_k|to_v)_lora\.(down|up)\."), r".\1.lora.\2."),
    (re.compile(r"\.lora_linear_layer\.(down|up)\."), r".lora.\1."),
    (re.compile(r"\.lora\.down\."), ".lora_A."),
    (re.compile(r"\.lora\.up\."), ".lora_B."),
)


def to_peft_key(key: str) -> str:
    """Convert the older diffusers / attention-processor key styles to peft's ``lora_A``/``lora_B``."""
    for pattern, replacement in _DIFFUSERS_KEY_STYLES:
        key = pattern.sub(replacement, key)
    return key


def from_diffusers(
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
    *,
    prefix: str = "transformer",
    rename: Rename | None = None,
) -> ImportedAdapter:
    """A diffusers LoRA file's tensors (and its parsed ``lora_adapter_metadata``, if any).

    ``prefix`` is the pipeline component (``"transformer"``, ``"unet"``; ``""`` for unprefixed keys):
    only its keys are read, as in diffusers' ``load_lora_adapter(prefix=...)``.
    """
    dotted = f"{prefix}." if prefix else ""
    tensors = _strip_prefix(state_dict, dotted, "diffusers LoRA")
    alpha_keys = {k.removesuffix(".alpha"): v for k, v in tensors.items() if k.endswith(".alpha")}
    tensors = {to_peft_key(k): v for k, v in tensors.items() if not k.endswith(".alpha")}
    pairs = _pairs_from_peft_keys(tensors, "diffusers LoRA")
    use_rslora, dropout = False, 0.0
    if metadata is not None:
        config_dict = {
            k.removeprefix(dotted): v for k, v in metadata.items() if not dotted or k.startswith(dotted)
        }
        if "r" not in config_dict:
            raise ValueError(
                f"diffusers LoRA: the {DIFFUSERS_METADATA_KEY!r} header has no {dotted + 'r'!r} entry "
                f"(entries: {sorted(metadata)[:8]}); is prefix={prefix!r} right?"
            )
        config = AdapterConfig.from_peft_dict({"target_modules": sorted(pairs), **config_dict})
        alphas = {path: config.alpha_for(path) for path in pairs}
        use_rslora, dropout = config.use_rslora, config.dropout
    else:
        # No metadata: kohya-style ".alpha" scalars if present, else diffusers' own rule alpha = r.
        alphas = {}
        for path, (down, _) in pairs.items():
            alpha = alpha_keys.get(path)
            alphas[path] = float(alpha) if alpha is not None else float(down.shape[0])
    modules = {path: ModuleLora(a, b, alphas[path]) for path, (a, b) in pairs.items()}
    return ImportedAdapter(_renamed(modules, rename), use_rslora=use_rslora, dropout=dropout)


def from_native(
    state_dict: Mapping[str, torch.Tensor], header: Mapping[str, Any], *, rename: Rename | None = None
) -> tuple[ImportedAdapter, AdapterConfig]:
    """A multi-lora native file: peft-style keys plus the ``multi_lora`` header (config, per-module
    rank/alpha, scalar gate). Returns the adapter and its saved config."""
    config = AdapterConfig.from_dict(header["config"])
    pairs = _pairs_from_peft_keys(state_dict, "multi-lora native file")
    described = header["modules"]
    mismatch = sorted(set(pairs) ^ set(described))
    if mismatch:
        raise ValueError(f"multi-lora native file: header and tensors disagree on modules {mismatch[:10]}")
    modules = {path: ModuleLora(a, b, float(described[path]["alpha"])) for path, (a, b) in pairs.items()}
    gate = header.get("gate")
    return (
        ImportedAdapter(
            _renamed(modules, rename), use_rslora=config.use_rslora, dropout=config.dropout, scale=gate
        ),
        config,
    )


def from_animatediff(
    state_dict: Mapping[str, torch.Tensor], *, scale: float = 1.0, rename: Rename | None = None
) -> ImportedAdapter:
    """An AnimateDiff domain adapter / MotionLoRA (``processor.to_q_lora.down/up`` keys).

    AnimateDiff applies ``scale * up @ down`` with no ``/ r``; the adapter is built with ``alpha = r``
    (scaling 1) and ``scale`` becomes its gate, so it can be changed or switched off later.
    """
    if not any(re.search(r"_lora\.(down|up)\.|\.lora\.(down|up)\.", k) for k in state_dict):
        raise ValueError(
            f"not an AnimateDiff-style LoRA: no '*_lora.down/up' keys (first keys: {list(state_dict)[:5]})"
        )
    pairs = _pairs_from_peft_keys({to_peft_key(k): v for k, v in state_dict.items()}, "AnimateDiff LoRA")
    modules = {path: ModuleLora(a, b, float(a.shape[0])) for path, (a, b) in pairs.items()}
    return ImportedAdapter(_renamed(modules, rename), scale=float(scale))


def from_layerflow_official(
    state_dict: Mapping[str, torch.Tensor],
    *,
    rename: Rename,
    adapters: Mapping[str, tuple[str, str]] = LAYERFLOW_OFFICIAL_ADAPTERS,
    alpha: float = 1.0,
    prefix: str = LAYERFLOW_OFFICIAL_PREFIX,
    drop_zero: bool = True,
) -> dict[str, ImportedAdapter]:
    """LayerFlow's official SAT LoRAs, one :class:`ImportedAdapter` per entry of ``adapters``.

    ``rename`` maps each SAT module (``transformer.layers.5.attention.query_key_value``) to the
    model's modules, one per partition (``[".../to_q", ".../to_k", ".../to_v"]``); the ``layerflow``
    package supplies the CogVideoX mapping. Keys without ``prefix`` are read as they are; keys that
    are not LoRA matrices (the base weights) are ignored. ``drop_zero`` leaves out modules whose up
    matrices are all zero (the official checkpoints carry untrained zero-init LoRAs in most blocks):
    they add exactly nothing, so dropping them only saves compute.
    """
    names = "|".join(re.escape(n) for pair in adapters.values() for n in pair)
    pattern = re.compile(rf"(.+)\.({names})\.(\d+)")
    found: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for key, tensor in state_dict.items():
        match = pattern.fullmatch(key.removeprefix(prefix))
        if match:
            module, matrix, part = match.groups()
            found.setdefault(matrix, {}).setdefault(module, {})[int(part)] = tensor
    if not found:
        raise ValueError(f"no LayerFlow LoRA keys ('<module>.{{{names}}}.<p>') in the state dict")
    imported: dict[str, ImportedAdapter] = {}
    for adapter, (down_name, up_name) in adapters.items():
        downs, ups = found.get(down_name, {}), found.get(up_name, {})
        mismatch = sorted(set(downs) ^ set(ups))
        if mismatch:
            raise ValueError(
                f"adapter {adapter!r}: modules with only one of {down_name}/{up_name}: {mismatch[:10]}"
            )
        modules: dict[str, ModuleLora] = {}
        problems: list[str] = []
        for module in sorted(downs):
            parts = sorted(downs[module])
            if parts != sorted(ups[module]) or parts != list(range(len(parts))):
                problems.append(f"{module}: partitions {parts} / {sorted(ups[module])}")
                continue
            down_list = [downs[module][p] for p in parts]
            up_list = [ups[module][p] for p in parts]
            if drop_zero and all(not bool(up.any()) for up in up_list):
                continue
            try:
                targets = rename_module(module, rename)
                pieces = split_fused_lora(down_list, up_list, len(targets))
            except KeyError:
                problems.append(f"{module}: the rename gives no module for it")
                continue
            except ValueError as error:
                problems.append(f"{module}: {error}")
                continue
            for target, (down, up) in zip(targets, pieces):
                modules[target] = ModuleLora(down, up, alpha)
        if problems:
            raise ValueError(f"LayerFlow adapter {adapter!r}: " + "; ".join(problems))
        if modules:
            imported[adapter] = ImportedAdapter(modules)
    return imported
