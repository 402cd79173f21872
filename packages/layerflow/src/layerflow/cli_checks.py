"""Checks on what a user gives the ``layerflow`` command, run before any model is loaded.

Each raises :class:`CliError` with one line naming the flag, file or value, so a bad setting costs
a second instead of a whole generation, and nothing is written or deleted on the way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

#: Components a task needs; ``vae``/``transformer``/``text_encoder`` must carry weights.
REQUIRED_COMPONENTS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
WEIGHTED_COMPONENTS = ("transformer", "vae", "text_encoder")


class CliError(Exception):
    """A user-facing problem: printed as one line, exit status 2."""


def check_device(spec: str | None) -> str:
    """The device to run on: ``spec`` checked (parses, exists), else CUDA when available, else CPU."""
    if spec is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise CliError(f"--device {spec!r} is not a device (e.g. cpu, cuda, cuda:1): {error}") from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CliError(f"--device {spec}: no CUDA device is available here (use --device cpu)")
        if device.index is not None and device.index >= count:
            raise CliError(f"--device {spec}: only {count} CUDA device(s) here (cuda:0 .. cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise CliError(f"--device {spec}: MPS is not available here (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise CliError(f"--device {spec}: unsupported device type {device.type!r} (use cpu or cuda)")
    return spec


def check_model_dir(model_dir: str | Path) -> dict[str, Any]:
    """The model folder's ``model_index.json``, after checking every component's config and weights."""
    from .pipelines.folders import check_component, check_component_classes, read_model_index

    try:
        index = read_model_index(model_dir, REQUIRED_COMPONENTS)
        for name in REQUIRED_COMPONENTS:
            if name != "tokenizer":
                check_component(Path(model_dir) / name, weights=name in WEIGHTED_COMPONENTS)
        check_component_classes(model_dir, index)
    except (FileNotFoundError, ValueError) as error:
        raise CliError(str(error)) from error
    if index.get("transparent_vae") and index["transparent_vae"][0]:
        folder = Path(model_dir) / "transparent_vae"
        if not folder.is_dir():
            raise CliError(
                f"model folder {model_dir} declares a transparent_vae but has no transparent_vae/ folder"
            )
        try:
            check_component(folder, weights=True)
        except (FileNotFoundError, ValueError) as error:
            raise CliError(str(error)) from error
    return index
