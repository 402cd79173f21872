"""Exact fused attention over concatenated layer clips (LayerFlow): segment layouts + backends."""

from importlib.metadata import version as _version

from .backends import AUTO_ORDER, BACKENDS, AttentionBackend
from .call import AttentionCall
from .crossovers import CrossoverTable, packaged_table
from .dispatch import AutoChoice, BackendNotSupportedError, backend_reasons, explain_auto, select_backend
from .functional import layer_attention
from .layout import SegmentLayout, TileLists
from .presets import TEXT_TOKENS, cogvideox_clip_tokens, conditional_layout, layerflow_layout
from .reference import reference_attention

__version__ = _version("layer-attention")

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "TEXT_TOKENS",
    "AttentionBackend",
    "AttentionCall",
    "AutoChoice",
    "BackendNotSupportedError",
    "CrossoverTable",
    "SegmentLayout",
    "TileLists",
    "backend_reasons",
    "cogvideox_clip_tokens",
    "conditional_layout",
    "explain_auto",
    "layer_attention",
    "layerflow_layout",
    "packaged_table",
    "reference_attention",
    "select_backend",
]
