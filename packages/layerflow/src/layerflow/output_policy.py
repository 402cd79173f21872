"""The one rule for every folder LayerFlow writes over: what may be replaced, and when.

* An existing folder is replaced only with ``overwrite``, and only when it holds its writer's
  *marker* file (``manifest.json`` for output folders, ``model_index.json`` for a saved pipeline,
  the conversion record for a converted checkpoint): an overwrite never deletes a folder LayerFlow
  did not write. :func:`layerflow.atomic.atomic_directory` applies this rule to every write.
* A command's output is also never the working folder nor a folder holding one of its inputs, and
  its parent must be writable: :func:`check_output` says so before any model is loaded.
* What is written gets the permissions the umask gives, and replaces the old folder atomically
  (:mod:`layerflow.atomic`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

#: The marker of a saved pipeline folder (``save_pretrained``).
PIPELINE_INDEX = "model_index.json"


class OutputRefused(FileExistsError):
    """An output folder may not be written or replaced (a one-line reason)."""


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
    if marker is not None and not (target / marker).is_file():
        raise OutputRefused(
            f"{label} exists and was not written by layerflow (no {marker}): overwrite only replaces earlier outputs"
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
