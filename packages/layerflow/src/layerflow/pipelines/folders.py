"""Checks on diffusers pipeline folders, before anything is loaded from them.

Each check reads only small files (JSON configs, safetensors headers), so a broken folder is named
in one line before minutes go into loading or generating.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerflow.json_files import read_json_object

#: Weight files diffusers/transformers look for in a component folder (any one of them will do).
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
)


def read_model_index(folder: str | os.PathLike[str], required: Sequence[str]) -> dict[str, Any]:
    """``model_index.json`` of ``folder``; every ``required`` component needs an entry and a sub-folder.

    Raises ``FileNotFoundError`` naming the folder and the missing components, ``ValueError`` for a
    malformed ``model_index.json``.
    """
    folder = Path(folder)
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{folder} is not a pipeline folder: {index_file} is missing")
    index = read_json_object(index_file)
    malformed = [
        name
        for name, entry in index.items()
        if not name.startswith("_")
        and name != "layout"
        and not (
            isinstance(entry, list)
            and len(entry) == 2
            and all(e is None or isinstance(e, str) for e in entry)
        )
    ]
    if malformed:
        raise ValueError(f"{index_file}: entries {malformed} must be [library, class] pairs")
    missing = [
        name
        for name in required
        if not (isinstance(index.get(name), list) and index[name][0] and (folder / name).is_dir())
    ]
    if missing:
        raise FileNotFoundError(
            f"pipeline folder {folder} lacks component(s) {missing} (a folder and a model_index.json entry each)"
        )
    return index


def check_safetensors(path: str | os.PathLike[str]) -> None:
    """The header of a ``.safetensors`` file parses and its tensors fit in the file (not truncated)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path} is truncated or not a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length > size - 8:
            raise ValueError(f"{path} is truncated or not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} has a corrupt safetensors header: {error}") from error
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise ValueError(
            f"{path} is truncated: its tensors need {8 + length + end} bytes, the file has {size}"
        )


def check_component(folder: str | os.PathLike[str], *, weights: bool) -> None:
    """A component folder has a valid JSON config and (``weights``) intact weight files."""
    folder = Path(folder)
    configs = [
        folder / name for name in ("config.json", "scheduler_config.json") if (folder / name).is_file()
    ]
    if not configs:
        raise FileNotFoundError(f"{folder} has no config.json")
    read_json_object(configs[0])
    if not weights:
        return
    if not any((folder / name).is_file() for name in WEIGHT_NAMES):
        raise FileNotFoundError(f"{folder} has no weights (expected one of {list(WEIGHT_NAMES[:2])})")
    for file in sorted(folder.glob("*.safetensors")):
        check_safetensors(file)


#: Libraries a model_index.json may name: a class elsewhere is never imported.
COMPONENT_LIBRARIES = ("diffusers", "transformers", "layerflow")


def _expected_base(component: str) -> type:
    """The kind of class a pipeline component must be (by its name in model_index.json)."""
    import diffusers
    import transformers

    return {
        "scheduler": diffusers.SchedulerMixin,
        "tokenizer": transformers.PreTrainedTokenizerBase,
        "text_encoder": transformers.PreTrainedModel,
    }.get(component, diffusers.ModelMixin)


def component_class(folder: str | os.PathLike[str], name: str, entry: Sequence[str]) -> type:
    """The class ``model_index.json`` names for component ``name``, resolved only inside
    :data:`COMPONENT_LIBRARIES` and checked to be of the component's kind; ``ValueError`` naming
    the file and key otherwise."""
    import importlib

    index_file = Path(folder) / "model_index.json"
    library, class_name = entry
    if library.split(".")[0] not in COMPONENT_LIBRARIES:
        raise ValueError(
            f"{index_file}: {name!r} names library {library!r}; components come from {list(COMPONENT_LIBRARIES)}"
        )
    try:
        found = getattr(importlib.import_module(library), class_name, None)
    except ImportError as error:
        raise ValueError(f"{index_file}: {name!r}: cannot import {library!r} ({error})") from None
    base = _expected_base(name)
    if not isinstance(found, type):
        raise ValueError(f"{index_file}: {name!r}: {library} has no class {class_name!r}")
    if not issubclass(found, base):
        raise ValueError(f"{index_file}: {name!r}: {library}.{class_name} is not a {base.__name__}")
    return found


def _type_problem(value: Any, default: Any) -> str | None:
    """What is wrong with a config ``value`` whose constructor default is ``default`` (None: fine)."""
    if value is None or default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    if isinstance(default, tuple | list):
        return None if isinstance(value, list) else "a list"
    return None


def check_config_types(folder: str | os.PathLike[str], cls: type) -> dict[str, Any]:
    """A diffusers component's config (``config.json``/``scheduler_config.json``): every value has
    the type of its constructor default. Returns the config."""
    import inspect

    folder = Path(folder)
    config_file = folder / getattr(cls, "config_name", "config.json")
    config = read_json_object(config_file)
    for key, parameter in inspect.signature(cls.__init__).parameters.items():
        if key in config and (problem := _type_problem(config[key], parameter.default)):
            raise ValueError(f"{config_file}: {key!r} must be {problem}, got {config[key]!r}")
    return config


def safetensors_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a ``.safetensors`` header declares (the file is checked first)."""
    check_safetensors(path)
    with Path(path).open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {key: tuple(entry["shape"]) for key, entry in header.items() if key != "__metadata__"}


def check_weight_shapes(folder: str | os.PathLike[str], cls: type, config: dict[str, Any]) -> None:
    """Every tensor of the component's safetensors weights has the shape ``cls`` built from its
    config (on the meta device: no memory) needs; ``.bin`` weights load with ``weights_only``."""
    import torch
    from accelerate import init_empty_weights

    folder = Path(folder)
    for pickled in sorted(folder.glob("*.bin")):
        try:
            torch.load(pickled, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            raise ValueError(
                f"{pickled}: holds pickled objects besides tensors, which could run code when loaded "
                "(use safetensors weights)"
            ) from None
        except Exception as error:  # a damaged file: RuntimeError, EOFError, ... by the damage
            raise ValueError(f"{pickled}: not a readable weights file ({type(error).__name__})") from None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return
    try:
        with init_empty_weights():
            model = cls.from_config(config)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as error:
        raise ValueError(
            f"{folder / 'config.json'}: {cls.__name__} cannot be built from it ({error})"
        ) from None
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    for file in files:
        for key, shape in safetensors_shapes(file).items():
            if key in expected and shape != expected[key]:
                raise ValueError(
                    f"{file}: tensor {key!r} has shape {list(shape)}, the config needs {list(expected[key])}"
                )


def check_component_classes(folder: str | os.PathLike[str], index: dict[str, Any]) -> None:
    """Each component's class (see :func:`component_class`); for diffusers components also the
    config's value types and the weights' tensor shapes, before anything is loaded."""
    import diffusers

    for name, entry in index.items():
        if name.startswith("_") or name == "layout" or not entry[0]:
            continue
        cls = component_class(folder, name, entry)
        if (
            issubclass(cls, diffusers.SchedulerMixin | diffusers.ModelMixin)
            and (Path(folder) / name).is_dir()
        ):
            config = check_config_types(Path(folder) / name, cls)
            if issubclass(cls, diffusers.ModelMixin):
                check_weight_shapes(Path(folder) / name, cls, config)
