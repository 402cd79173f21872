"""Exact fused attention over concatenated layer clips (LayerFlow): segment layouts + backends."""

from importlib.metadata import version as _version

from .backends import AUTO_ORDER, BACKENDS, AttentionBackend
from .call import AttentionCall
from .crossovers import CrossoverTable, packaged_table
from .dispatch import AutoChoice, BackendNotSupportedError, backend_reasons, explain_auto, select_backend
from .functional import layer_attention
from .layout import SegmentLayout, TileLists
from .reference import reference_attention

__version__ = _version("layer-attention")

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "AttentionBackend",
    "AttentionCall",
    "AutoChoice",
    "BackendNotSupportedError",
    "CrossoverTable",
    "SegmentLayout",
    "TileLists",
    "backend_reasons",
    "explain_auto",
    "layer_attention",
    "packaged_table",
    "reference_attention",
    "select_backend",
]
