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

from layerflow.json_files import read_json_object, special_file

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
    if kind := special_file(path):
        raise ValueError(f"{path} is {kind}, not a weights file")
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
    for index_file in sorted(folder.glob("*.safetensors.index.json")):
        check_shard_index(index_file)


def check_shard_index(index_file: str | os.PathLike[str]) -> None:
    """A sharded checkpoint's index (``*.safetensors.index.json``): its ``weight_map`` maps tensor
    names to shard files beside it, each shard exists and holds the tensors mapped to it."""
    index_file = Path(index_file)
    weight_map = read_json_object(index_file).get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise ValueError(f"{index_file}: 'weight_map' must map tensor names to shard file names")
    shards: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        if Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise ValueError(
                f"{index_file}: tensor {key!r} maps to {shard!r}, not a .safetensors file beside the index"
            )
        if shard not in shards:
            if not (index_file.parent / shard).is_file():
                raise ValueError(f"{index_file}: shard {shard!r} (tensor {key!r}) is missing")
            shards[shard] = set(safetensors_shapes(index_file.parent / shard))
        if key not in shards[shard]:
            raise ValueError(f"{index_file}: tensor {key!r} is not in its shard {shard!r}")


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
    """A component's config (``config.json``/``scheduler_config.json``): every value has the type
    of its constructor default (a transformers model's: its config class's). Returns the config."""
    import inspect

    folder = Path(folder)
    config_file = folder / (getattr(cls, "config_name", None) or "config.json")
    config = read_json_object(config_file)
    takes: type = getattr(cls, "config_class", None) or cls  # transformers: the model's PretrainedConfig
    for key, parameter in inspect.signature(takes).parameters.items():
        if key in config and (problem := _type_problem(config[key], parameter.default)):
            raise ValueError(f"{config_file}: {key!r} must be {problem}, got {config[key]!r}")
    return config


def safetensors_header(path: str | os.PathLike[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each tensor's shape and dtype (``"F32"``, ``"I64"``, ...) as the ``.safetensors`` header
    declares them, the file checked first: no weights are read."""
    check_safetensors(path)
    with Path(path).open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {
        key: (tuple(entry["shape"]), str(entry["dtype"]))
        for key, entry in header.items()
        if key != "__metadata__"
    }


def safetensors_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a ``.safetensors`` header declares (the file is checked first)."""
    return {key: shape for key, (shape, _) in safetensors_header(path).items()}


#: safetensors dtypes a floating-point weight may be stored in (loading casts among them).
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def _empty_model(folder: Path, cls: type, config: dict[str, Any]) -> Any:
    """``cls`` built from its config on the meta device (no memory): the tensors it expects."""
    import diffusers
    from accelerate import init_empty_weights

    try:
        with init_empty_weights():
            if issubclass(cls, diffusers.ModelMixin):
                return cls.from_config(config)
            model: Any = cls  # a transformers PreTrainedModel, built from its config class
            return model(model.config_class.from_dict(config))
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as error:
        reason = " ".join(str(error).split())
        raise ValueError(
            f"{folder / 'config.json'}: {cls.__name__} cannot be built from it ({reason})"
        ) from None


def check_weight_shapes(folder: str | os.PathLike[str], cls: type, config: dict[str, Any]) -> None:
    """Every tensor of the component's weights (one file or shards) has the shape ``cls`` built from
    its config (on the meta device: no memory) needs, and a floating-point weight a floating-point
    dtype. Of safetensors files only the headers are read; ``.bin`` files are mapped (``mmap``) with
    ``weights_only``, which refuses pickled objects."""
    import torch

    folder = Path(folder)
    stored: dict[Path, dict[str, tuple[tuple[int, ...], str, bool]]] = {}
    for pickled in sorted(folder.glob("*.bin")):
        if kind := special_file(pickled):
            raise ValueError(f"{pickled} is {kind}, not a weights file")
        try:
            state = torch.load(pickled, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            raise ValueError(
                f"{pickled}: holds pickled objects besides tensors, which could run code when loaded "
                "(use safetensors weights)"
            ) from None
        except Exception as error:  # a damaged file: RuntimeError, EOFError, ... by the damage
            raise ValueError(f"{pickled}: not a readable weights file ({type(error).__name__})") from None
        if isinstance(state, dict):
            stored[pickled] = {
                key: (tuple(t.shape), str(t.dtype).removeprefix("torch."), t.dtype.is_floating_point)
                for key, t in state.items()
                if isinstance(t, torch.Tensor)
            }
    for file in sorted(folder.glob("*.safetensors")):
        header = safetensors_header(file)
        stored[file] = {key: (shape, dtype, dtype in FLOAT_DTYPES) for key, (shape, dtype) in header.items()}
    if not stored:
        return
    expected = _empty_model(folder, cls, config).state_dict()
    for file, tensors in stored.items():
        for key, (shape, dtype, floating) in tensors.items():
            if key not in expected:
                continue
            if shape != tuple(expected[key].shape):
                raise ValueError(
                    f"{file}: tensor {key!r} has shape {list(shape)}, the config needs {list(expected[key].shape)}"
                )
            if expected[key].dtype.is_floating_point and not floating:
                raise ValueError(
                    f"{file}: tensor {key!r} is stored as {dtype}, a weight must be floating point "
                    f"({', '.join(FLOAT_DTYPES[:4])})"
                )


def check_component_classes(folder: str | os.PathLike[str], index: dict[str, Any]) -> None:
    """Each component's class (see :func:`component_class`); for diffusers components and
    transformers models (the T5 text encoder) also the config's value types and the weights'
    tensor shapes and dtypes, before anything is loaded."""
    import diffusers
    import transformers

    models = (diffusers.ModelMixin, transformers.PreTrainedModel)
    for name, entry in index.items():
        if name.startswith("_") or name == "layout" or not entry[0]:
            continue
        cls = component_class(folder, name, entry)
        if issubclass(cls, (diffusers.SchedulerMixin, *models)) and (Path(folder) / name).is_dir():
            config = check_config_types(Path(folder) / name, cls)
            if issubclass(cls, models):
                check_weight_shapes(Path(folder) / name, cls, config)
