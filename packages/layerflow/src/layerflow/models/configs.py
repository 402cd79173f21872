"""Model geometry from saved model configs, a missing key taking the model class's own default.

The defaults are read from the classes' ``__init__`` signatures (what ``from_config`` would build),
so this lives with the model classes: :mod:`layerflow.geometry` stays a leaf that reads complete
configs and imports no model.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffusers.models.autoencoders.autoencoder_kl_cogvideox import AutoencoderKLCogVideoX

from layerflow.geometry import ModelGeometry

from .transformer_layerflow import LayerFlowTransformer3DModel


def with_class_defaults(model_class: type, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` completed with ``model_class.__init__``'s defaults (what ``from_config`` would build)."""
    defaults = {
        name: param.default
        for name, param in inspect.signature(model_class).parameters.items()
        if param.default is not inspect.Parameter.empty
    }
    return {**defaults, **{k: v for k, v in config.items() if not k.startswith("_")}}


def model_geometry(vae_config: Mapping[str, Any], transformer_config: Mapping[str, Any]) -> ModelGeometry:
    """From ``AutoencoderKLCogVideoX`` and ``LayerFlowTransformer3DModel`` configs (dicts or FrozenDicts)."""
    return ModelGeometry.from_configs(
        with_class_defaults(AutoencoderKLCogVideoX, vae_config),
        with_class_defaults(LayerFlowTransformer3DModel, transformer_config),
    )


def folder_geometry(folder: str | os.PathLike[str]) -> ModelGeometry:
    """From a pipeline folder's ``vae/config.json`` and ``transformer/config.json`` (no weights read)."""
    folder = Path(folder)
    configs = []
    for component in ("vae", "transformer"):
        path = folder / component / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {folder} is not a complete LayerFlow model folder")
        configs.append(json.loads(path.read_text()))
    return model_geometry(*configs)
