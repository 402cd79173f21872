"""Fingerprints of encoder modules: config plus a hash of every weight.

A precompute cache is only valid for the exact VAE and text encoder that wrote it; hashing the
weights (not just the config or the checkpoint path) catches fine-tuned or re-converted weights.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from .base import digest

VOLATILE_CONFIG_KEYS = frozenset(
    {"_name_or_path", "_commit_hash", "_diffusers_version", "transformers_version", "_use_default_values"}
)
"""Config entries that say where a model came from or which library wrote it, not what it computes."""


def _config_of(obj: Any) -> Any:
    config = getattr(obj, "config", None)
    if config is None:
        return None
    to_dict = getattr(config, "to_dict", None)
    content = to_dict() if callable(to_dict) else dict(config)
    return {k: v for k, v in content.items() if k not in VOLATILE_CONFIG_KEYS}


def weights_hash(module: nn.Module) -> str:
    """sha256 over every parameter and buffer: name, dtype, shape and raw bytes, in name order."""
    hasher = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        hasher.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        hasher.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def module_fingerprint(module: nn.Module) -> str:
    """Hash of a module's class, configs (its own and its direct children's), plain settings, tokenizer
    vocabulary (when it holds one) and weights."""
    settings = {
        k: v
        for k, v in vars(module).items()
        if isinstance(v, (str, int, float, bool)) and not k.startswith("_") and k != "training"
    }
    children = {name: _config_of(child) for name, child in module.named_children()}
    tokenizer = getattr(module, "tokenizer", None)
    vocab = tokenizer.get_vocab() if tokenizer is not None and hasattr(tokenizer, "get_vocab") else None
    payload = {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "config": _config_of(module),
        "children": {k: v for k, v in children.items() if v is not None},
        "settings": settings,
        "vocab": digest(sorted(vocab.items())) if vocab else None,
        "weights": weights_hash(module),
    }
    return digest(payload)
