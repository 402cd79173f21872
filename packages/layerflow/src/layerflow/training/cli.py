"""``python -m layerflow.training --stage N [--config FILE]``: train one stage of the LayerFlow recipe.

Without ``--config`` the tiny built-in config runs end to end on CPU on embedded synthetic data;
outputs go to ``outputs/train/stage{N}/`` and stage N starts from ``outputs/train/stage{N-1}/final``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from layerflow.data import NoSamplesError, SampleError
from layerflow.output_policy import OutputRefused

from .chain import run_earlier_stages
from .checkpointing import CheckpointError, latest_checkpoint
from .config import ConfigError, load_config, merge_tables, parse_override
from .export import MissingStageError
from .launch import LaunchError
from .output_dir import OutputInUseError
from .sources import check_source_paths


def build_parser(prog: str = "python -m layerflow.training") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stage",
        type=int,
        required=True,
        choices=(1, 2, 3),
        help="1: layer-aware model, 2: motion LoRA, 3: content LoRA",
    )
    parser.add_argument("--config", default=None, help="TOML/YAML config (default: the tiny built-in config)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        help="continue from the newest checkpoint of the output folder that reads completely (a damaged newer "
        "one is skipped with a warning), or from the given checkpoint",
    )
    parser.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: continue although settings that shape training (learning rate, trained blocks, "
        "data, ...) differ from the checkpoint's (listed as a warning)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the previous run in the stage's output folder (its checkpoints, final/, logs)",
    )
    parser.add_argument(
        "--from-base", action="store_true", help="stages 2/3: start from model.base, not the previous stage"
    )
    parser.add_argument(
        "--earlier-stages",
        action="store_true",
        help="tiny default only: first run the earlier stages whose output is missing (nox does this)",
    )
    parser.add_argument(
        "--output-root", default=None, help="override run.output_root (stage outputs go to ROOT/stage{N})"
    )
    parser.add_argument("--max-steps", type=int, default=None, help="override run.max_steps")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. optim.batch_size=4",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m layerflow.training") -> int:
    """Run one stage; returns the exit status (2 for a bad config or a missing previous stage)."""
    args = build_parser(prog).parse_args(argv)
    try:
        return _run(args)
    except (
        ConfigError,
        MissingStageError,
        OutputInUseError,
        OutputRefused,
        CheckpointError,
        LaunchError,
        SampleError,
        NoSamplesError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    for text in args.set:
        overrides = merge_tables(overrides, parse_override(text))
    run: dict[str, Any] = {}
    if args.output_root is not None:
        run["output_root"] = args.output_root
    if args.max_steps is not None:
        run["max_steps"] = args.max_steps
    if args.no_progress:
        run["progress"] = False
    overrides = merge_tables(overrides, {"run": run} if run else {})
    if args.from_base:
        overrides = merge_tables(overrides, {"model": {"init_from": "base"}})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.earlier_stages and (status := run_earlier_stages(args, overrides)):
        return status
    config = load_config(args.config, args.stage, overrides)
    check_source_paths(config)
    from .trainer import train

    try:
        result = train(config, resume=args.resume, overwrite=args.overwrite, allow_changes=args.allow_changes)
    except KeyboardInterrupt:
        newest = latest_checkpoint(config.output_dir)
        resume = (
            f"run the same command with --resume to continue from {newest}"
            if newest is not None
            else "no checkpoint was written yet: run the same command to start over"
        )
        print(f"error: interrupted: {resume}", file=sys.stderr)
        return 130
    if result.final_dir is not None:
        print(
            f"stage {args.stage}: {len(result.losses)} steps, final loss {result.losses[-1]:.4f}, output {result.final_dir}"
        )
    return 0
