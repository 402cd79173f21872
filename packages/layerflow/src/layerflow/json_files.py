"""Reading the small JSON files LayerFlow folders carry (manifests, model indexes, configs), and
the one check every reader of user files makes before opening one."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

_SPECIAL = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
}


def special_file(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it is a FIFO, socket or device (``"a FIFO"``, ...), else ``None`` (a
    file, a folder or nothing): opening one blocks or never ends, so readers refuse it first."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing or unreadable: the reader's own open names it
        return None
    return _SPECIAL.get(stat.S_IFMT(mode))


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON file holding an object; ``ValueError`` naming the file otherwise."""
    path = Path(path)
    if kind := special_file(path):
        raise ValueError(f"{path} is {kind}, not a JSON file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data
