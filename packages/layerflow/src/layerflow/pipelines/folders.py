"""Checks on diffusers pipeline folders, before anything is loaded from them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_model_index(folder: str | os.PathLike[str], required: Sequence[str]) -> dict[str, Any]:
    """``model_index.json`` of ``folder``; every ``required`` component needs an entry and a sub-folder.

    Raises ``FileNotFoundError`` naming the folder and the missing components.
    """
    folder = Path(folder)
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{folder} is not a pipeline folder: {index_file} is missing")
    index: dict[str, Any] = json.loads(index_file.read_text())
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
