"""``--earlier-stages``: run the missing earlier stages of the tiny default first.

Stage N starts from stage N-1's ``final/pipeline``. On a fresh clone ``nox -s train_stage3`` would
stop there; with the tiny built-in config the earlier stages take minutes, so they are run first,
each in its own process exactly as ``python -m layerflow.training --stage K`` would run it. With a
user's ``--config`` the missing stage stays an error: a real stage is hours of compute.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from layerflow.stage_output import StageOutput

from .config import ConfigError, load_config


def forwarded_options(args: argparse.Namespace) -> list[str]:
    """The command-line options every stage of the chain shares (not ``--stage``/``--resume``)."""
    options: list[str] = []
    if args.output_root is not None:
        options += ["--output-root", args.output_root]
    if args.max_steps is not None:
        options += ["--max-steps", str(args.max_steps)]
    for text in args.set:
        options += ["--set", text]
    if args.no_progress:
        options.append("--no-progress")
    return options


def missing_earlier_stages(stage: int, overrides: dict[str, Any]) -> list[int]:
    """The earlier stages to run, in order, so that ``stage`` finds its starting point."""
    missing: list[int] = []
    for earlier in range(stage - 1, 0, -1):
        if StageOutput(load_config(None, earlier + 1, overrides).previous_stage_dir).is_finished():
            break
        missing.insert(0, earlier)
    return missing


def run_earlier_stages(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """Run the missing earlier stages (announcing each); returns the first non-zero exit status, else 0."""
    if args.config is not None:
        raise ConfigError("--earlier-stages runs only with the tiny built-in config (no --config)")
    if args.from_base:
        return 0  # the stage starts from model.base: no earlier stage needed
    for earlier in missing_earlier_stages(args.stage, overrides):
        print(
            f"stage {args.stage} starts from stage {earlier}'s output, which does not exist yet: "
            f"running stage {earlier} first",
            file=sys.stderr,
            flush=True,
        )
        command = [
            sys.executable,
            "-m",
            "layerflow.training",
            "--stage",
            str(earlier),
            *forwarded_options(args),
        ]
        status = subprocess.call(command)
        if status:
            return status
    return 0
