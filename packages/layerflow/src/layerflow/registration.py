"""Make saved LayerFlow folders loadable through diffusers' own entry points in a fresh interpreter.

diffusers resolves the names in ``model_index.json`` only from modules that are already imported (it
never imports a module because a file names it), and ``DiffusionPipeline.from_pretrained`` resolves
``_class_name`` only on the ``diffusers`` namespace. LayerFlow therefore (1) imports its component
modules together with the pipeline (see ``pipelines/__init__.py``) and (2) lets the ``diffusers``
namespace resolve ``LayerFlowPipeline``.

(2) must stay lazy: ``import layerflow`` does not import diffusers (seconds), and nothing may be
imported while diffusers itself, or a layerflow module that imports it, is still initialising. So
``import layerflow`` only gives the ``diffusers`` module object an attribute fallback for that one
name (at once if diffusers is imported, else through a one-shot post-import hook); the pipeline
module is imported the first time diffusers looks the name up.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

PIPELINE_NAME = "LayerFlowPipeline"


def _resolves_layerflow(module_type: type[ModuleType]) -> type[ModuleType]:
    """A subclass of ``module_type`` whose attribute fallback also resolves ``LayerFlowPipeline``."""

    class _WithLayerFlow(module_type):  # type: ignore[valid-type,misc]  # a module class chosen at run time
        def __getattr__(self, name: str) -> Any:
            if name == PIPELINE_NAME:
                from layerflow.pipelines import LayerFlowPipeline

                return LayerFlowPipeline
            return super().__getattr__(name)

    return _WithLayerFlow


def publish_on_diffusers(diffusers: ModuleType) -> None:
    """Let ``getattr(diffusers, "LayerFlowPipeline")`` import and return the pipeline (idempotent)."""
    if getattr(type(diffusers), "_layerflow", False):
        return
    extended = _resolves_layerflow(type(diffusers))
    extended._layerflow = True  # type: ignore[attr-defined]
    diffusers.__class__ = extended


class _PublishingLoader(importlib.abc.Loader):
    """Wraps diffusers' loader: runs the module, then publishes the pipeline name on it."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        # diffusers' __init__ replaces itself in sys.modules with its lazy module object.
        publish_on_diffusers(sys.modules.get(module.__name__, module))


class _DiffusersImportHook(importlib.abc.MetaPathFinder):
    """One-shot finder: the first ``import diffusers`` gets a loader that publishes afterwards."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname != "diffusers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _PublishingLoader(spec.loader)
        return spec


def install_diffusers_hook() -> None:
    """Publish now if ``diffusers`` is imported, else once it is (called by ``import layerflow``)."""
    if "diffusers" in sys.modules:
        publish_on_diffusers(sys.modules["diffusers"])
    elif not any(isinstance(finder, _DiffusersImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DiffusersImportHook())
