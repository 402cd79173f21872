"""Convert an official LayerFlow (SAT, CogVideoX-2B) checkpoint into a ``from_pretrained`` directory.

The official checkpoint is ``<experiment>/<iteration>/mp_rank_00_model_states.pt`` (a dict whose
``"module"`` holds the weights; read with ``torch.load(weights_only=True)``, never unrestricted
unpickling). Only ``model.diffusion_model.*`` is the DiT; T5 and the VAE inside the file are stock
CogVideoX components and are skipped. SAT names map to diffusers' CogVideoX names by the rules of
diffusers' ``convert_cogvideox_to_diffusers.py`` plus LayerFlow's extras: ``.original`` base weights
under LoRA wrappers, the LoRA matrices (``matrix_A/B`` = motion, ``matrix_C/D`` = content, one pair
per q/k/v partition), the layer embedder (``mixins.pos_embed.txt_embedder``) and the joint position
table, kept when it differs from the sin-cos table it starts as.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

import multi_lora as ml

from .atomic import atomic_directory
from .models import LayerFlowTransformer3DModel
from .models.adapters import attach_lora_factors, merge_lora_into_state_dict, official_lora_factors
from .models.configs import model_geometry
from .output_policy import register_marker
from .pipelines.folders import read_model_index
from .pipelines.scheduling import make_scheduler
from .variants import OfficialVariant, PositionTableKind, matching_variants, official_variant

logger = logging.getLogger(__name__)

SAT_PREFIX = "model.diffusion_model."
CHECKPOINT_NAME = "mp_rank_00_model_states.pt"
#: Written into every converted folder; ``--overwrite`` replaces only folders that have it.
CONVERSION_RECORD = "conversion.json"
register_marker(CONVERSION_RECORD, lambda record: {"source", "lora", "variant"} <= set(record))
#: Non-DiT parts of the official file (T5, VAE, loss buffers): stock components, not converted.
SKIPPED_PREFIXES = ("conditioner.", "first_stage_model.", "model_ema.", "loss_fn.")
#: SAT keys diffusers drops too (RoPE buffers, token/position embeddings removed by ``reinit``).
DROPPED_SUFFIXES = ("freqs_sin", "freqs_cos", "embed_tokens.weight", "position_embedding")
LoraMode = Literal["adapters", "merge"]
QKV = ("to_q", "to_k", "to_v")
#: LoRA matrices (``matrix_A.0``): parsed by multi-lora's importer, not by the key mapper.
_LORA_KEY = re.compile(r"\.matrix_[ABCD]\.\d+$")


class ConversionError(ValueError):
    """The checkpoint does not have the expected keys or shapes; nothing was written."""


@dataclass
class ConvertedCheckpoint:
    """A converted DiT: transformer config + state dict, its official variant, LoRA factors, notes."""

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    variant: str
    lora: dict[str, dict[str, ml.ModuleLora]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ reading
def find_checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """An official experiment folder (with ``latest``), an iteration folder, or the ``.pt`` file itself."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"official checkpoint {path} does not exist")
    if (path / CHECKPOINT_NAME).is_file():
        return path / CHECKPOINT_NAME
    latest = path / "latest"
    if latest.is_file():
        iteration = latest.read_text().strip()
        candidate = path / iteration / CHECKPOINT_NAME
        root = path.resolve()
        if not iteration or not candidate.resolve().is_relative_to(root) or Path(iteration).is_absolute():
            raise ConversionError(
                f"{latest} names {iteration!r}, which is not an iteration folder inside {path}"
            )
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(f"{latest} points to {candidate}, which does not exist")
    raise FileNotFoundError(
        f"no {CHECKPOINT_NAME} in {path} (nor a 'latest' file naming an iteration folder)"
    )


def load_official_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The ``module`` weights of an official checkpoint, loaded with ``weights_only=True``."""
    file = find_checkpoint_file(path)
    zipped = zipfile.is_zipfile(file)
    with open(file, "rb") as handle:
        pickled = handle.read(1) == b"\x80"  # the protocol opcode of torch's legacy (pre-zip) format
    if not (zipped or pickled):
        raise ConversionError(
            f"{file} is not a torch checkpoint (neither torch.save's zip archive nor a pickle)"
        )
    try:  # mmap needs the zip format; a legacy file is read whole
        payload = torch.load(file, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as error:  # torch raises UnpicklingError/RuntimeError for bad or unsafe files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(
            f"cannot read {file} as a weights-only torch checkpoint: {first_line}"
        ) from error
    if not isinstance(payload, Mapping) or "module" not in payload:
        keys = list(payload)[:10] if isinstance(payload, Mapping) else type(payload).__name__
        raise ConversionError(f"{file} has no 'module' entry (found {keys}); is it a SAT checkpoint?")
    module = payload["module"]
    if not isinstance(module, Mapping):
        raise ConversionError(
            f"{file}: 'module' must map parameter names to tensors, got a {type(module).__name__}"
        )
    stray = [key for key, value in module.items() if not isinstance(key, str) or not torch.is_tensor(value)]
    if stray:
        raise ConversionError(f"{file}: 'module' entries that are not name -> tensor: {stray[:5]}")
    return dict(module)


# ------------------------------------------------------------------------------------------ mapping
_BLOCK_RULES: tuple[tuple[str, str], ...] = (
    ("input_layernorm", "norm1.norm"),
    ("post_attention_layernorm", "norm2.norm"),
    ("mlp.dense_h_to_4h", "ff.net.0.proj"),
    ("mlp.dense_4h_to_h", "ff.net.2"),
    ("attention.dense.original", "attn1.to_out.0"),
    ("attention.dense", "attn1.to_out.0"),
)
_GLOBAL_RULES: dict[str, str] = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "mixins.patch_embed.proj": "patch_embed.proj",
    "mixins.patch_embed.text_proj": "patch_embed.text_proj",
    "transformer.final_layernorm": "norm_final",
    "mixins.final_layer.norm_final": "norm_out.norm",
    "mixins.final_layer.linear": "proj_out",
    "mixins.final_layer.adaLN_modulation.1": "norm_out.linear",
    "mixins.pos_embed.txt_embedder.0": "patch_embed.layer_embedder.embed.0",
    "mixins.pos_embed.txt_embedder.1": "patch_embed.layer_embedder.embed.1",
}
_LAYER = re.compile(r"^transformer\.layers\.(\d+)\.(.+)$")
_LORA = re.compile(
    r"^transformer\.layers\.(\d+)\.attention\.(query_key_value|dense)\.matrix_([ABCD])\.(\d+)$"
)
_ADALN = re.compile(r"^mixins\.adaln_layer\.adaLN_modulations\.(\d+)\.1\.(weight|bias)$")
_QK_NORM = re.compile(r"^mixins\.adaln_layer\.(query|key)_layernorm_list\.(\d+)\.(weight|bias)$")
_QKV = re.compile(r"^transformer\.layers\.(\d+)\.attention\.query_key_value(?:\.original)?\.(weight|bias)$")


def _split_param(name: str) -> tuple[str, str]:
    module, _, param = name.rpartition(".")
    return module, param


class _Mapper:
    """Maps one SAT key at a time (LoRA matrices are left to multi-lora), collecting unknown keys."""

    def __init__(self) -> None:
        self.out: dict[str, torch.Tensor] = {}
        self.unknown: list[str] = []
        self.position_table: torch.Tensor | None = None

    def add(self, key: str, value: torch.Tensor) -> None:
        if key.endswith(DROPPED_SUFFIXES):
            return
        if key == "mixins.pos_embed.pos_embedding":
            self.position_table = value
        elif _LORA_KEY.search(key):
            return
        elif match := _QKV.match(key):
            for name, chunk in zip(QKV, value.chunk(3, dim=0), strict=True):
                self.out[f"transformer_blocks.{match[1]}.attn1.{name}.{match[2]}"] = chunk.clone()
        elif match := _ADALN.match(key):
            chunks = value.chunk(12, dim=0)
            block = f"transformer_blocks.{match[1]}"
            self.out[f"{block}.norm1.linear.{match[2]}"] = torch.cat(chunks[0:3] + chunks[6:9])
            self.out[f"{block}.norm2.linear.{match[2]}"] = torch.cat(chunks[3:6] + chunks[9:12])
        elif match := _QK_NORM.match(key):
            which = "norm_q" if match[1] == "query" else "norm_k"
            self.out[f"transformer_blocks.{match[2]}.attn1.{which}.{match[3]}"] = value
        elif match := _LAYER.match(key):
            module, param = _split_param(match[2])
            for sat, ours in _BLOCK_RULES:
                if module == sat:
                    self.out[f"transformer_blocks.{match[1]}.{ours}.{param}"] = value
                    return
            self.unknown.append(SAT_PREFIX + key)
        else:
            module, param = _split_param(key)
            if module in _GLOBAL_RULES:
                self.out[f"{_GLOBAL_RULES[module]}.{param}"] = value
            else:
                self.unknown.append(SAT_PREFIX + key)


def _base_config(
    weights: Mapping[str, torch.Tensor], *, max_text_seq_length: int, sample_height: int, sample_width: int
) -> dict[str, Any]:
    """The transformer config implied by the weight shapes (prompts and frames come from the variant)."""

    def need(key: str) -> torch.Tensor:
        if key not in weights:
            raise ConversionError(f"the checkpoint lacks {key!r}, needed to infer the model configuration")
        return weights[key]

    proj = need("patch_embed.proj.weight")
    hidden, in_channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    head_dim = int(need("transformer_blocks.0.attn1.norm_q.weight").shape[0])
    num_layers = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("transformer_blocks."))
    return {
        "num_attention_heads": hidden // head_dim,
        "attention_head_dim": head_dim,
        "in_channels": in_channels,
        "out_channels": int(need("proj_out.weight").shape[0]) // (patch * patch),
        "time_embed_dim": int(need("time_embedding.linear_1.weight").shape[0]),
        "text_embed_dim": int(need("patch_embed.text_proj.weight").shape[1]),
        "num_layers": num_layers,
        "sample_height": sample_height,
        "sample_width": sample_width,
        "patch_size": patch,
        "max_text_seq_length": max_text_seq_length,
        "layer_embedder": "linear" if "patch_embed.layer_embedder.embed.0.weight" in weights else None,
    }


def _table_kind(
    config: Mapping[str, Any], table: torch.Tensor, prompts: int, frames: int
) -> PositionTableKind:
    """``"sincos"`` when the checkpoint's table equals the sin-cos table it starts as, else ``"learned"``."""
    with torch.no_grad():
        model = LayerFlowTransformer3DModel(
            **{**config, "num_layers": 0, "num_layer_prompts": prompts, "learned_position_frames": frames}
        )
    reference = model.patch_embed.sincos_position_table(frames)
    table = table.float()
    same = reference.shape == table.shape and torch.allclose(reference, table, atol=1e-5, rtol=0)
    return "sincos" if same else "learned"


def detect_variant(
    config: Mapping[str, Any], position_table: torch.Tensor | None, requested: str | None = None
) -> tuple[OfficialVariant, PositionTableKind]:
    """The official variant of a checkpoint and its table kind, from the position table's length and
    kind and the layer embedder's presence; ``requested`` (``--variant``) overrides detection.

    Raises :class:`ConversionError` when nothing fits, or when several variants fit and none was
    requested (the message lists the candidates). A learned table that never moved from its sin-cos
    start reads as ``"sincos"``: such a checkpoint needs ``--variant``.
    """
    if position_table is None:
        raise ConversionError("the checkpoint has no mixins.pos_embed.pos_embedding: cannot tell its variant")
    rows = int(position_table.shape[1])
    text = int(config["max_text_seq_length"])
    tokens = model_geometry({}, config).tokens_per_latent_frame()
    splits = [
        (p, (rows - p * text) // tokens)
        for p in range(1, 9)
        if rows > p * text and (rows - p * text) % tokens == 0
    ]
    described = (
        f"position table of {rows} rows ({text}-token prompts, {tokens} tokens per latent frame: "
        f"(prompts, frames) splits {splits}), layer embedder {config['layer_embedder']}"
    )
    if requested is not None:
        variant = official_variant(requested)
        split = (variant.num_prompts, variant.table_latent_frames)
        if split not in splits or variant.layer_embedder != config["layer_embedder"]:
            raise ConversionError(f"the checkpoint is not a {requested} checkpoint: {described}")
        return variant, _table_kind(config, position_table, *split)
    kinds = {split: _table_kind(config, position_table, *split) for split in splits}
    candidates = [
        name
        for split, kind in kinds.items()
        for name in matching_variants(
            table_splits=[split], layer_embedder=config["layer_embedder"], position_table=kind
        )
    ]
    if not candidates:
        raise ConversionError(
            f"no official variant fits the checkpoint: {described}; check --text-length / --latent-size"
        )
    if len(candidates) > 1:
        raise ConversionError(
            f"the checkpoint fits several official variants {candidates} (same shapes): choose one with --variant"
        )
    variant = official_variant(candidates[0])
    return variant, kinds[(variant.num_prompts, variant.table_latent_frames)]


def convert_official_state_dict(
    sat_state_dict: Mapping[str, torch.Tensor],
    *,
    lora: LoraMode = "adapters",
    max_text_seq_length: int = 226,
    sample_height: int = 60,
    sample_width: int = 90,
    variant: str | None = None,
) -> ConvertedCheckpoint:
    """SAT names -> ``LayerFlowTransformer3DModel`` names; raises :class:`ConversionError` naming bad keys.

    The official variant is detected from the checkpoint (:func:`detect_variant`) unless ``variant``
    names it. ``lora="adapters"`` keeps the motion (A/B) and content (C/D) LoRAs as adapter factors;
    ``"merge"`` folds the content LoRA into the base weights (``W += D C / r`` in fp32, what the
    official inference computes) and drops the motion LoRA (gated to 0 at inference).
    """
    if lora not in ("adapters", "merge"):
        raise ValueError(f"lora must be 'adapters' or 'merge', got {lora!r}")
    mapper = _Mapper()
    skipped = 0
    foreign: list[str] = []
    for key, value in sat_state_dict.items():
        if key.startswith(SAT_PREFIX):
            mapper.add(key[len(SAT_PREFIX) :], value)
        elif key.startswith(SKIPPED_PREFIXES):
            skipped += 1
        else:
            foreign.append(key)
    if mapper.unknown or foreign:
        raise ConversionError(f"unknown keys in the official checkpoint: {sorted(mapper.unknown + foreign)}")
    config = _base_config(
        mapper.out,
        max_text_seq_length=max_text_seq_length,
        sample_height=sample_height,
        sample_width=sample_width,
    )
    found, kind = detect_variant(config, mapper.position_table, variant)
    temporal = inspect.signature(LayerFlowTransformer3DModel.__init__).parameters[
        "temporal_compression_ratio"
    ]
    config.update(
        num_layer_prompts=found.num_prompts,
        sample_frames=(found.table_latent_frames - 1) * int(temporal.default) + 1,
    )
    notes = [f"official variant {found.name} ({'given' if variant else 'detected'})"]
    notes += [f"skipped {skipped} T5/VAE/other non-DiT tensors"] if skipped else []
    state_dict = dict(mapper.out)
    if kind == "sincos":
        notes.append("position table equals the sin-cos table: computed at run time")
    else:
        assert mapper.position_table is not None  # detect_variant needs it
        config["learned_position_frames"] = found.table_latent_frames
        state_dict["patch_embed.position_table"] = mapper.position_table
        notes.append("position table differs from sin-cos (learned): stored in the checkpoint")

    lora_factors: dict[str, dict[str, ml.ModuleLora]] = {}
    if any(_LORA_KEY.search(key) for key in sat_state_dict):
        try:
            lora_factors = official_lora_factors(sat_state_dict)
        except ValueError as error:
            raise ConversionError(str(error)) from error
    dropped = sorted(set(ml.LAYERFLOW_OFFICIAL_ADAPTERS) - set(lora_factors))
    if dropped:
        notes.append(f"LoRA adapters without trained (non-zero) weights, not imported: {dropped}")
    if lora == "merge":
        try:
            merge_lora_into_state_dict(state_dict, lora_factors.get("content", {}))
        except (KeyError, ValueError) as error:
            raise ConversionError(str(error)) from error
        merged = len(lora_factors.get("content", {}))
        notes.append(f"merged the content LoRA into {merged} projections; motion LoRA dropped")
        lora_factors = {}
    return ConvertedCheckpoint(
        config=config, state_dict=state_dict, variant=found.name, lora=lora_factors, notes=notes
    )


def build_transformer(converted: ConvertedCheckpoint) -> LayerFlowTransformer3DModel:
    """Instantiate the converted transformer; missing or unexpected keys raise naming them."""
    with torch.device("meta"):
        model = LayerFlowTransformer3DModel(**converted.config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted.state_dict))
    unexpected = sorted(set(converted.state_dict) - set(expected))
    if missing or unexpected:
        raise ConversionError(
            f"converted weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    wrong = [
        f"{key}: model {tuple(expected[key].shape)}, checkpoint {tuple(value.shape)}"
        for key, value in converted.state_dict.items()
        if tuple(value.shape) != tuple(expected[key].shape)
    ]
    if wrong:
        raise ConversionError("shape mismatch: " + "; ".join(wrong))
    model.load_state_dict(converted.state_dict, assign=True)
    try:
        attach_lora_factors(model, converted.lora)
    except ValueError as error:  # multi-lora names every module whose factors do not fit
        raise ConversionError(str(error)) from error
    return model.eval()


# ------------------------------------------------------------------------------------------ writing
def convert_official_checkpoint(
    official: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    variant: str | None = None,
    lora: LoraMode = "adapters",
    max_text_seq_length: int = 226,
    sample_height: int = 60,
    sample_width: int = 90,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert ``official`` into ``out_dir`` (atomically: nothing is written if anything fails).

    ``out_dir`` gets ``transformer/`` (safetensors + config), ``scheduler/`` and a
    ``model_index.json`` whose ``layout`` is the official variant's (detected, or ``variant``), so
    the pipeline runs it with no further flags. With ``base`` (a local diffusers CogVideoX-2B folder) its ``vae``,
    ``text_encoder`` and ``tokenizer`` are copied in and the folder loads with
    ``LayerFlowPipeline.from_pretrained``; without it, ``LayerFlowTransformer3DModel.from_pretrained(out_dir / "transformer")``.
    """
    base_index = read_model_index(base, ("vae", "text_encoder", "tokenizer")) if base is not None else {}
    converted = convert_official_state_dict(
        load_official_state_dict(official),
        lora=lora,
        max_text_seq_length=max_text_seq_length,
        sample_height=sample_height,
        sample_width=sample_width,
        variant=variant,
    )
    layout = official_variant(converted.variant).layout
    transformer = build_transformer(converted)
    if dtype is not None:
        torch.nn.Module.to(transformer, dtype=dtype)
    for note in converted.notes:
        logger.info(note)
    with atomic_directory(out_dir, overwrite=overwrite, replaces=CONVERSION_RECORD) as temporary:
        transformer.save_pretrained(temporary / "transformer", safe_serialization=True)  # adapters included
        make_scheduler("dpm").save_pretrained(temporary / "scheduler")
        index: dict[str, Any] = {
            "_class_name": "LayerFlowPipeline",
            "layout": layout.to_dict(),
            "scheduler": ["diffusers", "CogVideoXDPMScheduler"],
            "transformer": ["layerflow.models.transformer_layerflow", "LayerFlowTransformer3DModel"],
            "transparent_vae": [None, None],
        }
        for component in ("vae", "text_encoder", "tokenizer"):
            if base is not None:
                shutil.copytree(Path(base) / component, temporary / component)
                index[component] = base_index[component]
        (temporary / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (temporary / CONVERSION_RECORD).write_text(
            json.dumps(
                {
                    "source": str(official),
                    "lora": lora,
                    "variant": converted.variant,
                    "notes": converted.notes,
                },
                indent=2,
            )
            + "\n"
        )
    return Path(out_dir)
