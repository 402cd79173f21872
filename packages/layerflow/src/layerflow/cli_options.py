"""Command-line options the ``layerflow`` task commands and ``layerflow edit`` share.

One definition of every sampling and output flag, turned into :class:`~layerflow.tasks.TaskOptions`
by :func:`task_options`, so ``edit`` takes the same options as ``fg2bg``/``bg2fg`` without going
through their parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .cli_checks import CliError
from .media import ALPHA_MODES, DEFAULT_FORMATS, FORMATS, parse_formats
from .presets import MEMORIES, SPEEDS
from .tasks import DTYPES, TaskOptions

#: Frame rates past this are typos: no player or encoder setting makes use of them.
MAX_FPS = 1000


def pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    """``LAYER=VALUE`` flags as a dict; each layer at most once."""
    found: dict[str, str] = {}
    for value in values or ():
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise CliError(f"{flag} expects LAYER=VALUE, got {value!r}")
        if name in found:
            raise CliError(f"{flag} given twice for layer {name!r}")
        found[name] = text
    return found


def _formats(text: str) -> tuple[str, ...]:
    try:
        return parse_formats(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--formats`` (with ``--no-video`` = ``--formats png``) and ``--premultiplied``, for every writer."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--formats",
        type=_formats,
        default=DEFAULT_FORMATS,
        metavar=",".join(FORMATS),
        help=f"files to write per layer (default {','.join(DEFAULT_FORMATS)}): png sequences, webm (VP9, "
        "with alpha), prores (ProRes 4444 .mov, with alpha), mp4 (H.264, opaque layers only)",
    )
    group.add_argument(
        "--no-video", dest="formats", action="store_const", const=("png",), help="same as --formats png"
    )
    parser.add_argument(
        "--premultiplied",
        dest="alpha_mode",
        action="store_const",
        const=ALPHA_MODES[1],
        default=ALPHA_MODES[0],
        help="store transparent layers' colour premultiplied by alpha (default straight; the manifest's "
        "'alpha' says which)",
    )


def add_task_options(parser: argparse.ArgumentParser, *, conditional: bool) -> None:
    """Negative prompts, sizes, sampling, seed, fps and device: every option of a task command but
    its model, prompts, inputs and output (``conditional``: the task takes condition clips)."""
    parser.add_argument(
        "-n", "--negative", action="append", metavar="LAYER=TEXT", help="negative prompt for a layer"
    )
    if conditional:
        parser.add_argument(
            "--isolate-conditions",
            action="store_true",
            help="condition clips attend only to text and themselves",
        )
    parser.add_argument("--frames", type=int, help="frames per layer (default: the input's, else 16)")
    parser.add_argument(
        "--trim",
        action="store_true",
        help="inputs longer than the run give their first frames (--frames, else the most the model runs), "
        "and a truncated video the frames that decode (default: any other length is an error)",
    )
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--steps", type=int, help="sampling steps (default 50)")
    parser.add_argument("--guidance", type=float, help="CFG scale (default 6)")
    parser.add_argument(
        "--dynamic-cfg",
        action=argparse.BooleanOptionalAction,
        help="the official oscillating CFG schedule (default: on for official variants, else off)",
    )
    parser.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        metavar=("START", "STOP"),
        help="CFG only on the steps from START to STOP, fractions of --steps (default: 0 1, every step)",
    )
    parser.add_argument(
        "--unconditional",
        choices=("zeros", "encoded"),
        help="CFG text: all-zero (official; default) or encoded negative prompts (default with --negative)",
    )
    parser.add_argument("--scheduler", choices=("dpm", "ddim"), default="dpm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--device", help="default: cuda when available")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument(
        "--speed",
        choices=SPEEDS,
        default="exact",
        help="exact (default), fast (PyramidAttentionBroadcast) or fastest (FasterCache): approximate caches",
    )
    parser.add_argument(
        "--memory",
        choices=MEMORIES,
        default="default",
        help="default (all on the device), offload (model CPU offload) or low (group offload, VAE tiling)",
    )


def task_options(args: argparse.Namespace) -> TaskOptions:
    """The options :func:`add_task_options` parsed (``--fps`` checked here: it is the writer's)."""
    if args.fps < 1:
        raise CliError(f"--fps must be >= 1, got {args.fps}")
    if args.fps > MAX_FPS:
        raise CliError(f"--fps must be <= {MAX_FPS}, got {args.fps}")
    return TaskOptions(
        frames=args.frames,
        trim=args.trim,
        height=args.height,
        width=args.width,
        steps=args.steps,
        guidance=args.guidance,
        dynamic_cfg=args.dynamic_cfg,
        guidance_interval=None if args.guidance_interval is None else tuple(args.guidance_interval),
        unconditional=args.unconditional,
        negative_prompts=pairs(args.negative, "--negative"),
        isolate_conditions=getattr(args, "isolate_conditions", False),
        scheduler=args.scheduler,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        speed=args.speed,
        memory=args.memory,
        first_frame_mode=(getattr(args, "first_frame_mode", None) or "").replace("-", "_") or None,
    )
