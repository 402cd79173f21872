"""The one rule for every folder LayerFlow writes over: what may be replaced, and when.

* An existing folder is replaced only with ``overwrite``, and only when it holds its writer's
  *marker* file (``manifest.json`` for output folders, ``model_index.json`` for a saved pipeline,
  the conversion record for a converted checkpoint) with the content its writer gives it (a JSON
  object; for registered markers, e.g. the output manifest, format and version checked): a folder
  that merely has a file of that name is not ours, and an overwrite never deletes a folder
  LayerFlow did not write. :func:`layerflow.atomic.atomic_directory` applies this rule to every
  write, at the start and again at the end against what is there then.
* A command's output is also never the working folder nor a folder holding one of its inputs, and
  its parent must be writable: :func:`check_output` says so before any model is loaded.
* What is written gets the permissions the umask gives, and replaces the old folder atomically
  (:mod:`layerflow.atomic`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: The marker of a saved pipeline folder (``save_pretrained``).
PIPELINE_INDEX = "model_index.json"

#: How the writer of a marker file recognises its content (see :func:`register_marker`).
_MARKERS: dict[str, Callable[[dict[str, Any]], bool]] = {
    PIPELINE_INDEX: lambda index: index.get("_class_name") == "LayerFlowPipeline",
}


class OutputRefused(FileExistsError):
    """An output folder may not be written or replaced (a one-line reason)."""


def register_marker(name: str, is_ours: Callable[[dict[str, Any]], bool]) -> None:
    """Say how a marker file ``name`` written by layerflow looks (its parsed JSON object), so that a
    file of that name written by anything else does not make a folder replaceable."""
    _MARKERS[name] = is_ours


def written_by_layerflow(folder: str | os.PathLike[str], marker: str) -> bool:
    """``folder`` holds ``marker`` as layerflow writes it: a JSON object its writer recognises."""
    try:
        content = json.loads((Path(folder) / marker).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(content, dict):
        return False
    try:
        return bool(_MARKERS.get(marker, lambda _: True)(content))
    except (TypeError, AttributeError):
        return False


def check_replaceable(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    marker: str | None,
    label: str | None = None,
    hint: str = "pass overwrite=True to replace it",
) -> None:
    """An existing ``path`` may be replaced: ``overwrite`` is set and ``path`` holds ``marker``
    (``None``: any folder); ``label`` names it and ``hint`` says how to overwrite, in the message."""
    target = Path(path)
    if not target.exists():
        return
    label = label or str(path)
    if not overwrite:
        raise OutputRefused(f"{label} already exists ({hint})")
    if marker is not None and not written_by_layerflow(target, marker):
        found = f"its {marker} is not layerflow's" if (target / marker).exists() else f"no {marker}"
        raise OutputRefused(
            f"{label} exists and was not written by layerflow ({found}): overwrite only replaces earlier outputs"
        )


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(
    output: str | os.PathLike[str],
    *,
    overwrite: bool,
    marker: str,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """``output`` may be written by a command: new, or (``overwrite``) an earlier output holding
    ``marker``; not the working folder, not holding any of ``inputs``; its parent writable."""
    target = Path(output).resolve()
    if Path.cwd().resolve().is_relative_to(target):
        raise OutputRefused(f"output {output} is the current folder or one of its parents: name a new folder")
    for item in inputs:
        if Path(item).resolve().is_relative_to(target):
            raise OutputRefused(f"output {output} contains the input {item}: name a folder of its own")
    check_replaceable(
        target, overwrite=overwrite, marker=marker, label=f"output {output}", hint="use --overwrite"
    )
    parent = _nearest_existing(target.parent)
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".layerflow-write-check.", dir=parent))
    except OSError as error:
        raise OutputRefused(f"cannot write output {output} in {parent}: {error.strerror or error}") from error
    if not os.access(parent, os.W_OK):
        raise OutputRefused(f"cannot write output {output}: {parent} is not writable")
