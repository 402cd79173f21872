"""Import (and export) LayerDiffuse's released transparent-VAE weights by key mapping.

Released files are plain state dicts: the offset encoder is an ``nn.Sequential`` (``blocks.N.*``,
convs at even N), the decoder is "UNet1024" in diffusers UNet2D naming (``down_blocks.i.resnets.j``,
``attentions.j.to_q``, ``downsamplers.0.conv``, ``mid_block``, ``latent_conv_in``, ...). Every own
parameter has one released name (temporal layers have none: they are new and keep their zero init),
so import and export use the same per-key translation, and any missing, unexpected or mis-shaped key
is reported with the file it came from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .decoder import TransparentDecoder
from .encoder import LatentOffsetEncoder

StateDict = dict[str, torch.Tensor]

# Own decoder name -> released name, applied in order (structure first, then leaf renames).
_DECODER_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^latent_in\.", "latent_conv_in."),
    (r"^norm_out\.", "conv_norm_out."),
    (r"^down\.(\d+)\.downsample\.", r"down_blocks.\1.downsamplers.0.conv."),
    (r"^up\.(\d+)\.upsample\.conv\.", r"up_blocks.\1.upsamplers.0.conv."),
    (r"^down\.", "down_blocks."),
    (r"^up\.", "up_blocks."),
    (r"^mid\.attention\.", "mid_block.attentions.0."),
    (r"^mid\.", "mid_block."),
    (r"\.shortcut\.", ".conv_shortcut."),
    (r"(attentions\.\d+)\.norm\.", r"\1.group_norm."),
    (r"\.to_out\.", ".to_out.0."),
)


def decoder_released_key(key: str) -> str | None:
    """Released UNet1024 name of a :class:`TransparentDecoder` parameter (``None`` for temporal layers)."""
    if key.startswith(("temporal.", "temporal_mid.")):
        return None
    for pattern, replacement in _DECODER_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def encoder_released_key(key: str, num_convs: int) -> str | None:
    """Released ``blocks.N`` name of a :class:`LatentOffsetEncoder` parameter (``None`` for temporal layers)."""
    if key.startswith("temporal."):
        return None
    if match := re.fullmatch(r"convs\.(\d+)\.(weight|bias)", key):
        return f"blocks.{2 * int(match.group(1))}.{match.group(2)}"
    if match := re.fullmatch(r"conv_out\.(weight|bias)", key):
        return f"blocks.{2 * num_convs}.{match.group(1)}"
    raise KeyError(f"LatentOffsetEncoder parameter {key!r} has no LayerDiffuse name")


def _key_function(module: nn.Module) -> Callable[[str], str | None]:
    if isinstance(module, TransparentDecoder):
        return decoder_released_key
    if isinstance(module, LatentOffsetEncoder):
        num_convs = len(module.convs)
        return lambda key: encoder_released_key(key, num_convs)
    raise TypeError(f"no LayerDiffuse naming for {type(module).__name__}")


def read_state_dict(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor], prefix: str = ""
) -> tuple[StateDict, str]:
    """A state dict from a ``.safetensors`` file, a torch file (loaded with ``weights_only=True``) or a mapping.

    ``prefix`` selects and strips one sub-module (e.g. ``"decoder."`` in Flux ports' ``TransparentVAE.pth``).
    """
    if isinstance(source, Mapping):
        state, name = dict(source), "<state dict>"
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"weight file {path} does not exist")
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        elif path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
            if not isinstance(state, dict):
                raise ValueError(f"{path} does not contain a state dict (got {type(state).__name__})")
        else:
            raise ValueError(
                f"unknown weight file type {path.suffix!r} for {path}: use .safetensors, .pt or .pth"
            )
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{name} has no keys starting with {prefix!r}")
    return state, name


def _require(state: StateDict, key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"{source} is not a LayerDiffuse file of the expected kind: key {key!r} is missing")
    return state[key]


def infer_encoder_config(state: StateDict, source: str = "<state dict>") -> dict[str, Any]:
    """``LatentOffsetEncoder`` arguments that reproduce a released encoder's shapes."""
    indices = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"blocks\.(\d+)\.weight", k))})
    if not indices or indices != list(range(0, 2 * len(indices), 2)) or (len(indices) - 1) % 2:
        raise ValueError(
            f"{source}: expected conv weights blocks.0, blocks.2, ... (an even number of trunk convs plus one "
            f"output conv), found indices {indices}"
        )
    num_convs = len(indices) - 1
    first = _require(state, "blocks.0.weight", source)
    return {
        "in_channels": int(first.shape[1]),
        "latent_channels": int(_require(state, f"blocks.{2 * num_convs}.weight", source).shape[0]),
        "block_channels": [int(state[f"blocks.{4 * j}.weight"].shape[0]) for j in range(num_convs // 2)],
    }


def infer_decoder_config(state: StateDict, source: str = "<state dict>") -> dict[str, Any]:
    """``TransparentDecoder`` arguments that reproduce a released UNet1024's shapes."""
    levels = 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(r"down_blocks\.(\d+)\.", k))), default=-1
    )
    if levels < 1:
        raise ValueError(f"{source} is not a LayerDiffuse decoder: no down_blocks.* keys")
    resnets = {int(m.group(1)) for k in state if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))}
    return {
        "in_channels": int(_require(state, "conv_in.weight", source).shape[1]),
        "out_channels": int(_require(state, "conv_out.weight", source).shape[0]),
        "latent_channels": int(_require(state, "latent_conv_in.weight", source).shape[1]),
        "block_out_channels": [
            int(_require(state, f"down_blocks.{i}.resnets.0.conv1.weight", source).shape[0])
            for i in range(levels)
        ],
        "attention_levels": [
            any(k.startswith(f"down_blocks.{i}.attentions.") for k in state) for i in range(levels)
        ],
        "layers_per_block": len(resnets),
    }


def load_released_state_dict(module: nn.Module, state: StateDict, source: str = "<state dict>") -> None:
    """Copy a released-naming state dict into ``module``; every mismatch is reported before anything is copied."""
    released_name = _key_function(module)
    own = module.state_dict()
    mapping = {r: k for k in own if (r := released_name(k)) is not None}
    missing = sorted(set(mapping) - set(state))
    unexpected = sorted(set(state) - set(mapping))
    mis_shaped = [
        f"{r}: file {tuple(state[r].shape)} vs {type(module).__name__}.{k} {tuple(own[k].shape)}"
        for r, k in sorted(mapping.items())
        if r in state and state[r].shape != own[k].shape
    ]
    problems = [
        f"{label} {items[:8]}{' ...' if len(items) > 8 else ''} ({len(items)} in all)"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mis_shaped),
        )
        if items
    ]
    if problems:
        raise ValueError(f"cannot import {source} into {type(module).__name__}: " + "; ".join(problems))
    result = module.load_state_dict({k: state[r] for r, k in mapping.items()}, strict=False)
    assert not result.unexpected_keys and all(released_name(k) is None for k in result.missing_keys)


def load_layerdiffuse_encoder(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    temporal_downsamples: int = 0,
    prefix: str = "",
) -> LatentOffsetEncoder:
    """Build a :class:`LatentOffsetEncoder` from a released encoder file (e.g. ``vae_transparent_encoder.safetensors``).

    ``temporal_downsamples=2`` gives a CogVideoX-style video encoder warm-started from the image weights
    (its temporal layers start as identity, so each latent frame is the mean offset of its frames).
    """
    state, name = read_state_dict(source, prefix)
    encoder = LatentOffsetEncoder(
        **infer_encoder_config(state, name), temporal_downsamples=temporal_downsamples
    )
    load_released_state_dict(encoder, state, name)
    return encoder


def load_layerdiffuse_decoder(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    temporal_layers: bool = False,
    attention_head_dim: int = 8,
    norm_num_groups: int = 4,
    latent_level: int = 3,
    prefix: str = "",
) -> TransparentDecoder:
    """Build a :class:`TransparentDecoder` from a released UNet1024 file (e.g. ``vae_transparent_decoder.safetensors``).

    The file does not record head size, GroupNorm groups or the injection level; the defaults are UNet1024's.
    """
    state, name = read_state_dict(source, prefix)
    decoder = TransparentDecoder(
        **infer_decoder_config(state, name),
        attention_head_dim=attention_head_dim,
        norm_num_groups=norm_num_groups,
        latent_level=latent_level,
        temporal_layers=temporal_layers,
    )
    load_released_state_dict(decoder, state, name)
    return decoder


def export_layerdiffuse_state_dict(module: LatentOffsetEncoder | TransparentDecoder) -> StateDict:
    """The module's weights in released LayerDiffuse naming (loadable by LayerDiffuse's own code)."""
    released_name = _key_function(module)
    if any(released_name(k) is None for k in module.state_dict()):
        raise ValueError(
            f"{type(module).__name__} has temporal layers, which the LayerDiffuse format cannot hold"
        )
    return {str(released_name(k)): v.detach().clone() for k, v in module.state_dict().items()}
