"""LayerFlow models: the layered CogVideoX transformer and its adapters."""

from .transformer_layerflow import LayerFlowPatchEmbed, LayerFlowTransformer3DModel
from .transparent import LayerFlowTransparentVAE

__all__ = ["LayerFlowPatchEmbed", "LayerFlowTransformer3DModel", "LayerFlowTransparentVAE"]
