"""``layerflow recompose`` and ``layerflow edit``, and the output options every writing command shares.

Examples::

    layerflow recompose out/ -o new/ --replace foreground=fox.mov --scale foreground=0.5 \\
        --offset foreground=20,10 --formats png,prores
    layerflow edit MODEL decomposed/ --regenerate background -p background="a snowy forest" \\
        -p composite="a red fox in a snowy forest" -o edited/ --steps 50 --seed 1

``edit`` takes the kept layer from an output folder (e.g. written by ``layerflow decompose``) or
from a media file/folder of that layer, runs ``fg2bg`` (regenerate the background) or ``bg2fg``
(regenerate the foreground) through :func:`layerflow.tasks.run` with every sampling option of
those commands, and recomposes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerflow import tasks
from layerflow.cli_checks import CliError
from layerflow.cli_options import add_output_options, add_task_options, pairs, task_options
from layerflow.locking import folder_lock
from layerflow.media import MANIFEST_NAME, FrameError, OutputLayer, quantize_8bit, read_clip, write_output_dir
from layerflow.output_policy import check_output

from .edit import EDIT_TASKS, check_kept, edited_layers, kept_role
from .recompose import (
    EditError,
    Replacement,
    load_layers,
    recompose,
    replacement_placement,
    summarize,
)

COMMANDS = {
    "recompose": "composite the layers of an output folder (some replaced by your frames) into a new folder",
    "edit": "keep one layer, regenerate the other from a new prompt (fg2bg / bg2fg), recompose",
}


# ------------------------------------------------------------------------------------------ options
def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    try:
        return pairs(values, flag)
    except CliError as error:
        raise EditError(str(error)) from error


#: Placement bounds, checked before any frame is read: an offset beyond the largest frame a task takes
#: places nothing on the clip, and a huge factor would resize a replacement into gigabytes.
MAX_OFFSET = 8192
MAX_SCALE = 16.0


def _offset(text: str, layer: str) -> tuple[int, int]:
    try:
        x, y = (int(part) for part in text.split(","))
    except ValueError:
        raise EditError(f"--offset for layer {layer!r} expects X,Y in pixels, got {text!r}") from None
    if max(abs(x), abs(y)) > MAX_OFFSET:
        raise EditError(f"--offset for layer {layer!r} must be within +-{MAX_OFFSET} pixels, got {text!r}")
    return x, y


def _scale(text: str, layer: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= MAX_SCALE:
        raise EditError(f"--scale for layer {layer!r} expects a factor in (0, {MAX_SCALE:g}], got {text!r}")
    return value


# ------------------------------------------------------------------------------------------ recompose
def recompose_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=COMMANDS["recompose"])
    parser.add_argument("source", help="an output folder (manifest.json + layers)")
    parser.add_argument("-o", "--output", required=True, help="the new output folder")
    parser.add_argument(
        "--replace",
        action="append",
        metavar="LAYER=PATH",
        help="replace a layer by a PNG folder, a WebM-alpha/ProRes 4444/MP4 video or a still image "
        "(held for every frame); transparent layers need alpha",
    )
    parser.add_argument(
        "--scale", action="append", metavar="LAYER=FACTOR", help="resize a replacement by FACTOR"
    )
    parser.add_argument(
        "--offset", action="append", metavar="LAYER=X,Y", help="put a replacement's top-left corner at X,Y"
    )
    add_output_options(parser)
    parser.add_argument("--overwrite", action="store_true")
    return parser


def run_recompose(args: argparse.Namespace) -> Path:
    replace = _pairs(args.replace, "--replace")
    scales = {k: _scale(v, k) for k, v in _pairs(args.scale, "--scale").items()}
    offsets = {k: _offset(v, k) for k, v in _pairs(args.offset, "--offset").items()}
    stray = sorted((set(scales) | set(offsets)) - set(replace))
    if stray:
        raise EditError(f"--scale/--offset given for {stray} without a --replace for that layer")
    check_output(
        args.output, overwrite=args.overwrite, marker=MANIFEST_NAME, inputs=[args.source, *replace.values()]
    )
    with folder_lock(args.output):  # no other writer of the folder runs meanwhile
        replacements = [
            Replacement.from_path(name, path, replacement_placement(scales.get(name), offsets.get(name)))
            for name, path in replace.items()
        ]
        return recompose(
            args.source,
            args.output,
            replacements,
            formats=args.formats,
            alpha=args.alpha_mode,
            overwrite=args.overwrite,
        )


# ------------------------------------------------------------------------------------------ edit
def edit_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=COMMANDS["edit"] + ". The other options are those of `layerflow fg2bg` / `bg2fg` "
        "(--steps, --guidance, --seed, --device, ...).",
    )
    parser.add_argument("model", help="a LayerFlow model folder")
    parser.add_argument(
        "source", help="an output folder holding the layer to keep, or that layer's frames/video/image"
    )
    parser.add_argument(
        "--regenerate", required=True, choices=sorted(EDIT_TASKS), help="the layer to resample"
    )
    parser.add_argument("-o", "--output", required=True, help="the new output folder")
    parser.add_argument(
        "-p",
        "--prompt",
        action="append",
        metavar="LAYER=TEXT",
        help="prompts; the kept layer's defaults to its prompt in the source folder",
    )
    add_task_options(parser, conditional=True)
    add_output_options(parser)
    parser.add_argument("--overwrite", action="store_true")
    return parser


def _kept_layers(args: argparse.Namespace, names: Sequence[str]) -> list[OutputLayer]:
    """The layers to keep: from the source folder's manifest, or the source media as the model's layer."""
    role = kept_role(args.regenerate)
    source = Path(args.source)
    if (source / MANIFEST_NAME).is_file():
        manifest, frames = load_layers(source)
        kept = [
            OutputLayer(layer.name, role, frames[layer.name], layer.prompt, f"kept from {source}")
            for layer in manifest.with_role(role)
        ]
        if not kept:
            raise EditError(f"{source} has no {role} layer to keep")
    else:
        if len(names) != 1:
            raise EditError(
                f"the model has {role} layers {list(names)}; give an output folder holding them all"
            )
        try:
            clip = read_clip(source)
        except FrameError as error:
            raise EditError(str(error)) from error
        kept = [OutputLayer(names[0], role, clip, None, f"given as {source}")]
    unknown = sorted({layer.name for layer in kept} - set(names))
    if unknown:
        raise EditError(f"the source's {role} layers {unknown} are not layers of the model ({list(names)})")
    check_kept(kept, args.regenerate)
    return kept


def run_edit(args: argparse.Namespace) -> Path:
    # 1. Everything about the request, before the model is loaded.
    check_output(
        args.output, overwrite=args.overwrite, marker=MANIFEST_NAME, inputs=[args.source, args.model]
    )
    with folder_lock(args.output):  # no other writer of the folder runs meanwhile
        options = task_options(args)
        layout = tasks.model_layout(args.model)
        role = kept_role(args.regenerate)
        kept = _kept_layers(args, [spec.name for spec in layout.layers if spec.role == role])
        prompts = {layer.name: layer.prompt for layer in kept if layer.prompt} | _pairs(
            args.prompt, "--prompt"
        )
        task = EDIT_TASKS[args.regenerate]
        # The model sees every layer as 8-bit PNG frames would hold it: edit used to hand the kept layers
        # to the task, and take its layers back, through PNG folders, and its outputs keep those bytes.
        conditions = {layer.name: quantize_8bit(layer.frames) for layer in kept}

        # 2. The task itself.
        result = tasks.run(args.model, task, prompts, conditions, options)

        # 3. Kept + generated layers, recomposed, into the new folder.
        layers = edited_layers(kept, result.output, args.regenerate, prompts, transform=quantize_8bit)
        settings: dict[str, Any] = {
            **result.settings,
            "edit": {"regenerate": args.regenerate, "source": str(args.source)},
        }
        return write_output_dir(
            args.output,
            layers,
            task=task,
            fps=args.fps,
            seed=args.seed,
            settings=settings,
            formats=args.formats,
            alpha=args.alpha_mode,
            summary=summarize(layers),
            overwrite=args.overwrite,
        )


# ------------------------------------------------------------------------------------------ entry
def main(command: str, argv: Sequence[str], prog: str | None = None) -> int:
    """Run ``layerflow recompose`` or ``layerflow edit`` on ``argv`` (the options after the command)."""
    prog = prog or f"layerflow {command}"
    try:
        if command == "recompose":
            path = run_recompose(recompose_parser(prog).parse_args(argv))
        elif command == "edit":
            parser = edit_parser(prog)
            args, unknown = parser.parse_known_args(argv)
            taken = sorted({"-i", "--input", "-a", "--alpha"} & set(unknown))
            if taken:
                raise EditError(
                    f"edit sets {taken} itself: give the kept layer as SOURCE and the folder with -o"
                )
            if unknown:
                parser.error(f"unrecognized arguments: {' '.join(unknown)}")
            path = run_edit(args)
        else:
            raise AssertionError(f"unknown editing command {command!r}")
    except (CliError, EditError, FrameError, FileExistsError) as error:
        print(f"layerflow: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
