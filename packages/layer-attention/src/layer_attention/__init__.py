"""Exact fused attention over concatenated layer clips (LayerFlow): segment layouts + backends."""

from importlib.metadata import version as _version

from .backends import AUTO_ORDER, BACKENDS, AttentionBackend
from .dispatch import BackendNotSupportedError, backend_reasons, select_backend
from .functional import layer_attention
from .layout import SegmentLayout, TileLists
from .reference import reference_attention

__version__ = _version("layer-attention")

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "AttentionBackend",
    "BackendNotSupportedError",
    "SegmentLayout",
    "TileLists",
    "backend_reasons",
    "layer_attention",
    "reference_attention",
    "select_backend",
]
