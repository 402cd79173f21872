"""Test helpers on top of :mod:`layerflow.tiny` (which production code imports instead of this module)."""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .data import Layer, LayeredSample
from .layout import LayerLayout
from .models import LayerFlowTransformer3DModel
from .tiny import (
    TINY_PROMPT_TOKENS,
    TINY_TEXT_LENGTH,
    TINY_TEXT_WIDTH,
    TINY_WORDS,
    build_tiny_pipeline,
    build_tiny_transformer,
    build_tiny_transparent_vae,
    build_tiny_vae,
    single_thread,
    tiny_transformer_config,
    tiny_words,
)

__all__ = [
    "PeakTensorBytes",
    "TINY_CACHE_SETTINGS",
    "TINY_PROMPT_TOKENS",
    "TINY_TEXT_LENGTH",
    "TINY_TEXT_WIDTH",
    "TINY_WORDS",
    "build_tiny_pipeline",
    "build_tiny_transformer",
    "build_tiny_transparent_vae",
    "build_tiny_vae",
    "hold_lock_elsewhere",
    "random_layer_frames",
    "random_layered_sample",
    "single_thread",
    "tiny_transformer_config",
    "tiny_words",
]


def random_layer_frames(
    layout: LayerLayout, num_frames: int = 8, height: int = 16, width: int = 16, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random frames for every layer: foregrounds RGBA (straight alpha), others RGB, ``[T, C, H, W]`` in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    frames: dict[str, torch.Tensor] = {}
    for spec in layout.layers:
        channels = 4 if spec.transparent else 3
        frames[spec.name] = torch.rand(num_frames, channels, height, width, generator=generator)
    return frames


def random_layered_sample(layout: LayerLayout, num_frames: int = 8, seed: int = 3) -> LayeredSample:
    """A training sample of :func:`random_layer_frames` for every layer of ``layout`` (one prompt each)."""
    frames = random_layer_frames(layout, num_frames=num_frames, seed=seed)
    layers = {
        spec.name: Layer(
            spec.role, frames[spec.name][:, :3], frames[spec.name][:, 3:] if spec.transparent else None
        )
        for spec in layout.layers
    }
    return LayeredSample("agreement", layers, {name: "a red circle" for name in layers}, "video", 8.0)


#: Cache settings that skip work on a tiny random pipeline (tests, ``bench_caches.py``): its
#: first-block residual changes by 40-80 % per step, so FirstBlockCache needs a high threshold.
#: MagCache also needs ``mag_ratios`` and ``num_inference_steps`` per call.
TINY_CACHE_SETTINGS: dict[str, dict[str, Any]] = {
    "first_block": {"threshold": 0.6},
    "pyramid_broadcast": {"spatial_attention_block_skip_range": 2},
    "faster": {"attention_weight_callback": lambda _: 0.3},
    "taylorseer": {"cache_interval": 2, "disable_cache_before_step": 2},
    "mag": {"threshold": 0.06},
}


class PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of the storages created by ops run inside the mode (pre-existing ones excluded)."""

    def __init__(self, existing: set[int]):
        super().__init__()
        self.existing = existing
        self.live = 0
        self.peak = 0
        self.refs: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tensors]

    def _release(self, pointer: int) -> None:
        entry = self.refs[pointer]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.refs[pointer]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            if not isinstance(value, torch.Tensor):
                continue
            storage = value.untyped_storage()
            pointer = storage.data_ptr()
            if pointer in self.existing or storage.nbytes() == 0:
                continue
            if pointer not in self.refs:
                self.refs[pointer] = [storage.nbytes(), 0]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self.refs[pointer][1] += 1
            weakref.finalize(value, self._release, pointer)
        return out


# ------------------------------------------------------------------ official (SAT) checkpoints
#: Attention projections that carry the official motion/content LoRAs.
LORA_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
_SAT = "model.diffusion_model."
_SAT_GLOBALS = {
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
LoraFactors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def random_lora_factors(model: torch.nn.Module, rank: int, seed: int) -> LoraFactors:
    """Random ``(down, up)`` factors for every LoRA projection of ``model``."""
    generator = torch.Generator().manual_seed(seed)
    factors: LoraFactors = {}
    for name, module in model.named_modules():
        if name.endswith(LORA_PROJECTIONS):
            factors[name] = (
                torch.randn(rank, module.in_features, generator=generator) * 0.3,
                torch.randn(module.out_features, rank, generator=generator) * 0.3,
            )
    return factors


def official_state_dict(
    model: LayerFlowTransformer3DModel,
    motion: LoraFactors,
    content: LoraFactors,
    position_table: torch.Tensor | None = None,
    position_frames: int = 16,
) -> dict[str, torch.Tensor]:
    """``model`` in the official SAT naming: the inverse of the documented SAT -> diffusers mapping,
    written independently of ``layerflow.convert`` so that a round trip tests it."""
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for i in range(len(model.transformer_blocks)):
        b, layer = f"transformer_blocks.{i}.", f"{_SAT}transformer.layers.{i}."
        for ours, sat in (("norm1.norm", "input_layernorm"), ("norm2.norm", "post_attention_layernorm")):
            for p in ("weight", "bias"):
                out[f"{layer}{sat}.{p}"] = sd[f"{b}{ours}.{p}"]
        for p in ("weight", "bias"):
            out[f"{layer}attention.query_key_value.original.{p}"] = torch.cat(
                [sd[f"{b}attn1.{n}.{p}"] for n in ("to_q", "to_k", "to_v")]
            )
            out[f"{layer}attention.dense.original.{p}"] = sd[f"{b}attn1.to_out.0.{p}"]
            out[f"{layer}mlp.dense_h_to_4h.{p}"] = sd[f"{b}ff.net.0.proj.{p}"]
            out[f"{layer}mlp.dense_4h_to_h.{p}"] = sd[f"{b}ff.net.2.{p}"]
            one, two = sd[f"{b}norm1.linear.{p}"].chunk(6), sd[f"{b}norm2.linear.{p}"].chunk(6)
            out[f"{_SAT}mixins.adaln_layer.adaLN_modulations.{i}.1.{p}"] = torch.cat(
                one[:3] + two[:3] + one[3:] + two[3:]
            )
            out[f"{_SAT}mixins.adaln_layer.query_layernorm_list.{i}.{p}"] = sd[f"{b}attn1.norm_q.{p}"]
            out[f"{_SAT}mixins.adaln_layer.key_layernorm_list.{i}.{p}"] = sd[f"{b}attn1.norm_k.{p}"]
        for letters, factors in ((("A", "B"), motion), (("C", "D"), content)):
            for index, name in enumerate(("to_q", "to_k", "to_v")):
                down, up = factors[f"{b}attn1.{name}"]
                out[f"{layer}attention.query_key_value.matrix_{letters[0]}.{index}"] = down
                out[f"{layer}attention.query_key_value.matrix_{letters[1]}.{index}"] = up
            down, up = factors[f"{b}attn1.to_out.0"]
            out[f"{layer}attention.dense.matrix_{letters[0]}.0"] = down
            out[f"{layer}attention.dense.matrix_{letters[1]}.0"] = up
    for sat, ours in _SAT_GLOBALS.items():
        for p in ("weight", "bias"):
            if f"{ours}.{p}" in sd:  # no layer embedder in the seg variants
                out[f"{_SAT}{sat}.{p}"] = sd[f"{ours}.{p}"]
    if position_table is None:
        position_table = model.patch_embed.sincos_position_table(position_frames)
    out[f"{_SAT}mixins.pos_embed.pos_embedding"] = position_table.detach().clone()
    out["conditioner.embedders.0.transformer.shared.weight"] = torch.zeros(4, 4)  # T5: skipped
    out["first_stage_model.encoder.conv_in.weight"] = torch.zeros(4)  # VAE: skipped
    return out


def write_official_checkpoint(root: str | os.PathLike[str], module: Any, name: str = "exp") -> Path:
    """An official experiment folder ``root/name`` (``latest`` -> ``1000/mp_rank_00_model_states.pt``)."""
    experiment = Path(root) / name
    (experiment / "1000").mkdir(parents=True)
    torch.save({"module": module, "iteration": 1000}, experiment / "1000" / "mp_rank_00_model_states.pt")
    (experiment / "latest").write_text("1000\n")
    return experiment


def hold_lock_elsewhere(folder: str | os.PathLike[str]) -> subprocess.Popen[str]:
    """Another process holding ``folder``'s write lock (:mod:`layerflow.locking`) until its stdin
    closes (``communicate("")``) or it is killed: the first writer of a race, made deterministic."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from layerflow.locking import folder_lock\n"
            f"with folder_lock({str(folder)!r}):\n    print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder
