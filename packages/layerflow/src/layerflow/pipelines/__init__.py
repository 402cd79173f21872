"""LayerFlow pipelines.

The component modules are imported with the pipeline: diffusers' loader only resolves the
``model_index.json`` entries of modules that are already imported.
"""

from layerflow import models as _models  # noqa: F401  # component classes for model_index.json

from .output import LayerFlowOutput
from .pipeline_layerflow import LayerFlowPipeline, dynamic_guidance_scale

__all__ = ["LayerFlowOutput", "LayerFlowPipeline", "dynamic_guidance_scale"]
