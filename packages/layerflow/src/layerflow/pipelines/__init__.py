"""LayerFlow pipelines."""

from .pipeline_layerflow import LayerFlowOutput, LayerFlowPipeline, dynamic_guidance_scale

__all__ = ["LayerFlowOutput", "LayerFlowPipeline", "dynamic_guidance_scale"]
