"""Layer-index embeddings and layer-wise prompts for layered diffusion models (LayerFlow)."""

from importlib.metadata import version as _version

from .embedder import OFFICIAL_PREFIX, LayerEmbedder, layer_token_ids
from .encoder import LayerPromptEmbeddings, LayerPromptEncoder
from .prompts import format_layer_prompt, format_layer_prompts, parse_layer_prompt

__version__ = _version("layer-embeddings")

__all__ = [
    "OFFICIAL_PREFIX",
    "LayerEmbedder",
    "LayerPromptEmbeddings",
    "LayerPromptEncoder",
    "format_layer_prompt",
    "format_layer_prompts",
    "layer_token_ids",
    "parse_layer_prompt",
]
