"""LayerFlow models: the layered CogVideoX transformer and its adapters."""

from .transformer_layerflow import LayerFlowPatchEmbed, LayerFlowTransformer3DModel

__all__ = ["LayerFlowPatchEmbed", "LayerFlowTransformer3DModel"]
