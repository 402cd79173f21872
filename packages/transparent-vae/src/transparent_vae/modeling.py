"""Config capture and safetensors save/load for the package's networks (diffusers ``ModelMixin`` style).

The constructor signature is the config: :func:`register_to_config` records the bound ``__init__``
arguments, :meth:`ConfigModule.save_pretrained` writes them as ``config.json`` next to the weights in
``model.safetensors``, and :meth:`ConfigModule.from_pretrained` rebuilds the module from both.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ._files import atomic_write

P = ParamSpec("P")
M = TypeVar("M", bound="ConfigModule")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"config value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def register_to_config(init: Callable[Concatenate[Any, P], None]) -> Callable[Concatenate[Any, P], None]:
    """Decorate ``__init__`` so that its bound arguments (defaults filled in) become ``self.config``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: Any, *args: P.args, **kwargs: P.kwargs) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        config = {name: _jsonable(value) for name, value in bound.arguments.items() if name != "self"}
        init(self, *args, **kwargs)
        self.config = config

    return wrapper


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def zero_module(module: ModuleT) -> ModuleT:
    """Zero every parameter of ``module`` (ControlNet / LayerDiffuse ``zero_module``) and return it."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ConfigModule(nn.Module):
    """``nn.Module`` with a recorded config and local ``save_pretrained`` / ``from_pretrained``."""

    config: dict[str, Any]

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (each atomically)."""
        folder = Path(directory)
        config = {"_class_name": type(self).__name__, **self.config}
        atomic_write(folder / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(
            folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"})
        )
        return folder

    @classmethod
    def from_pretrained(cls: type[M], directory: str | os.PathLike[str]) -> M:
        """Rebuild the module from a folder written by :meth:`save_pretrained`."""
        folder = Path(directory)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{cls.__name__}.from_pretrained: {path} does not exist")
        config = json.loads(config_path.read_text())
        class_name = config.pop("_class_name", cls.__name__)
        if class_name != cls.__name__:
            raise ValueError(f"{config_path} describes a {class_name}, not a {cls.__name__}")
        module = cls(**config)
        load_checked_state_dict(module, load_file(str(weights_path)), source=str(weights_path))
        return module


def load_checked_state_dict(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Strict load that names every missing / unexpected / mis-shaped key and the file it came from."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_head(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_head(unexpected)}")
    if mis_shaped:
        problems.append(f"shape mismatches {_head(mis_shaped)}")
    if problems:
        raise ValueError(f"cannot load {source} into {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def _head(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"
