"""LayerFlow: layer-aware video generation on diffusers' CogVideoX.

The heavy parts (diffusers, transformers) load on first use, so ``import layerflow.data`` or
``layerflow.metrics`` stays light.
"""

from importlib import import_module
from importlib.metadata import version as _version
from typing import Any

from .layout import LayerLayout, LayerSpec, TaskLayout
from .registration import install_diffusers_hook

__version__ = _version("layerflow")

_LAZY = {
    "LayerFlowTransformer3DModel": "layerflow.models",
    "LayerFlowPipeline": "layerflow.pipelines",
    "LayerFlowOutput": "layerflow.pipelines",
    "convert_official_checkpoint": "layerflow.convert",
    "FirstFrame": "layerflow.conditions",
    "first_frame_only": "layerflow.conditions",
}

__all__ = [
    "FirstFrame",
    "LayerFlowOutput",
    "LayerFlowPipeline",
    "LayerFlowTransformer3DModel",
    "LayerLayout",
    "LayerSpec",
    "TaskLayout",
    "convert_official_checkpoint",
    "first_frame_only",
]


install_diffusers_hook()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'layerflow' has no attribute {name!r}")
