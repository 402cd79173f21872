"""Make saved LayerFlow folders loadable through diffusers' own entry points in a fresh interpreter.

diffusers resolves the names in ``model_index.json`` only from modules that are already imported (it
never imports a module because a file names it), and ``DiffusionPipeline.from_pretrained`` resolves
``_class_name`` only on the ``diffusers`` namespace. LayerFlow therefore (1) imports its component
modules together with the pipeline (see ``pipelines/__init__.py``) and (2) publishes
``LayerFlowPipeline`` on the ``diffusers`` namespace. ``import layerflow`` stays light: it defers (2)
with a one-shot post-import hook until ``diffusers`` is imported (or does it at once if it already is).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

_PIPELINE_MODULE = "layerflow.pipelines.pipeline_layerflow"


def register_with_diffusers() -> None:
    """Publish ``LayerFlowPipeline`` as ``diffusers.LayerFlowPipeline`` (idempotent)."""
    import diffusers

    from .pipelines.pipeline_layerflow import LayerFlowPipeline

    setattr(diffusers, LayerFlowPipeline.__name__, LayerFlowPipeline)


def _register_after_diffusers_import() -> None:
    # While the pipeline module itself is being imported, its package registers at the end of its import.
    module = sys.modules.get(_PIPELINE_MODULE)
    if module is not None and not hasattr(module, "LayerFlowPipeline"):
        return
    importlib.import_module("layerflow.pipelines")  # registers on import


class _RegisteringLoader(importlib.abc.Loader):
    """Wraps diffusers' loader: runs the module, then registers LayerFlow's pipeline."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _register_after_diffusers_import()


class _DiffusersImportHook(importlib.abc.MetaPathFinder):
    """One-shot finder: the first ``import diffusers`` gets a loader that registers afterwards."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname != "diffusers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install_diffusers_hook() -> None:
    """Register now if ``diffusers`` is imported, else once it is (called by ``import layerflow``)."""
    if "diffusers" in sys.modules:
        _register_after_diffusers_import()
    elif not any(isinstance(finder, _DiffusersImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DiffusersImportHook())
