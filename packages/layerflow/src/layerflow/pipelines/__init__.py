"""LayerFlow pipelines.

The component modules are imported with the pipeline: diffusers' loader only resolves the
``model_index.json`` entries of modules that are already imported.
"""

from layerflow import models as _models  # noqa: F401  # component classes for model_index.json
from layerflow.registration import register_with_diffusers

from .pipeline_layerflow import LayerFlowOutput, LayerFlowPipeline, dynamic_guidance_scale

register_with_diffusers()

__all__ = ["LayerFlowOutput", "LayerFlowPipeline", "dynamic_guidance_scale"]
