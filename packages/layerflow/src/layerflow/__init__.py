"""LayerFlow: layer-aware video generation on diffusers' CogVideoX."""

from importlib.metadata import version as _version

__version__ = _version("layerflow")

__all__: list[str] = []
