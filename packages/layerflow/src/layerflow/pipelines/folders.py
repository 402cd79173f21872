"""Checks on diffusers pipeline folders, before anything is loaded from them.

Each check reads only small files (JSON configs, safetensors headers), so a broken folder is named
in one line before minutes go into loading or generating.
"""

from __future__ import annotations

import json
import os
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
