"""``layerflow`` command line: the four tasks, checkpoint conversion and ``info``.

Examples::

    layerflow generate MODEL -p foreground="a red fox" -p background="a snowy forest" \\
        -p composite="a red fox in a snowy forest" -o out/
    layerflow fg2bg MODEL -i foreground=fox.webm -p foreground=... -p background=... -p composite=... -o out/
    layerflow bg2fg MODEL -i background=forest.mp4 -p ... -o out/
    layerflow decompose MODEL -i composite=clip.mp4 -p foreground=... -p background=... -o out/
    layerflow animate MODEL --image foreground=cutout.png [--image background=plate.png] -p ... -o out/
    layerflow recompose out/ -o new/ --replace background=beach.mp4 --formats png,prores
    layerflow edit MODEL out/ --regenerate background -p background=... -p composite=... -o new/
    layerflow convert OFFICIAL_DIR OUT_DIR --base CogVideoX-2b/
    layerflow info PATH
    torchrun --nproc_per_node 8 -m layerflow generate MODEL --jobs videos.jsonl   # many videos, 8 GPUs

Inputs (``-i LAYER=PATH``) are video files (WebM VP9 keeps alpha), PNG/JPG frame folders, or RGBA
PNG folders; ``-a LAYER=PATH`` adds a separate alpha matte (frames or video) to an RGB input.
``animate`` takes first frames instead (``--image LAYER=PATH``: one image, RGBA for a transparent
layer unless ``--opaque LAYER``, resized only with ``--resize``).
Problems are reported as one line naming the file, layer or setting, before any model is loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import tasks
from .cli_checks import CliError
from .cli_options import add_output_options, add_task_options, pairs, task_options
from .conditions import FirstFrame, first_frame_only
from .layout import LayerLayout, LayerSpec
from .locking import folder_lock
from .media import MANIFEST_NAME, read_clip, read_manifest
from .output_policy import OutputRefused, check_output
from .tasks import DTYPES
from .variants import OFFICIAL_VARIANTS

if TYPE_CHECKING:
    from .pipelines import LayerFlowPipeline

#: Bounds of ``convert``'s sizes: tokens per prompt and latent height/width.
MAX_TEXT_LENGTH, MAX_LATENT_SIZE = 4096, 1024
TASK_COMMANDS = {
    "generate": "generate",
    "fg2bg": "foreground_to_background",
    "bg2fg": "background_to_foreground",
    "decompose": "decompose",
    "animate": "animate",
}


# ------------------------------------------------------------------------------------------ inputs
def read_frames(path: str | Path, *, partial: bool = False) -> torch.Tensor:
    """A frame folder, a video file or a single image -> ``[T, C, H, W]`` in [0, 1] (``partial``:
    a truncated video gives the frames that decode, for a run that asked for fewer)."""
    path = Path(path)
    if not path.exists():
        raise CliError(f"input {path} does not exist")
    try:
        return read_clip(path, partial=partial)
    except ValueError as error:
        raise CliError(str(error)) from error


def load_inputs(
    inputs: dict[str, str], alphas: dict[str, str], *, trim: bool = False
) -> dict[str, torch.Tensor]:
    """Read every ``-i``/``-a`` input; frame counts and sizes must agree across all of them
    (``trim``: longer ones are cut to the shortest, a truncated video gives what decodes)."""
    stray = sorted(set(alphas) - set(inputs))
    if stray:
        raise CliError(f"alpha given for {stray} without an input for that layer")
    frames: dict[str, torch.Tensor] = {}
    for name, path in inputs.items():
        color = read_frames(path, partial=trim)
        if color.shape[1] == 1:  # a greyscale video is an RGB one
            color = color.expand(-1, 3, -1, -1)
        if name in alphas:
            matte = read_frames(alphas[name], partial=trim)
            if trim:
                matte, color = matte[: color.shape[0]], color[: matte.shape[0]]
            if matte.shape[0] != color.shape[0] or matte.shape[-2:] != color.shape[-2:]:
                raise CliError(
                    f"alpha {alphas[name]} has {matte.shape[0]} frames of {tuple(matte.shape[-2:])}, "
                    f"input {path} has {color.shape[0]} frames of {tuple(color.shape[-2:])}"
                )
            if matte.shape[1] == 4 and bool((matte[:, 3] < 1).any()):  # an RGBA matte: its alpha
                matte = matte[:, 3:]
            color = torch.cat(
                [color[:, :3], matte[:, :1] if matte.shape[1] == 1 else matte[:, :3].mean(1, True)], 1
            )
        frames[name] = color
    if trim:
        shortest = min((clip.shape[0] for clip in frames.values()), default=0)
        frames = {name: clip[:shortest] for name, clip in frames.items()}
    shapes = {name: (f.shape[0], *f.shape[-2:]) for name, f in frames.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{name}: {n} frames of {h}x{w}" for name, (n, h, w) in shapes.items())
        raise CliError(f"inputs disagree in frame count or size ({described})")
    return frames


def first_frame_image(
    layer: LayerSpec, layout: LayerLayout, image: torch.Tensor, source: str, opaque: bool
) -> torch.Tensor:
    """An ``--image`` as its layer takes it: RGBA for a transparent layer (an RGB one only with
    ``--opaque``), RGB for an opaque layer (an RGBA one only when it has no transparent pixel)."""
    if image.shape[0] == 1:  # a greyscale image is an RGB one
        image = image.expand(3, -1, -1)
    if layer.transparent and layout.alpha != "rgb" and image.shape[0] == 3 and not opaque:
        raise CliError(
            f"--image {source} has no alpha, but {layer.name!r} is a transparent layer: give an RGBA "
            f"cutout, or pass --opaque {layer.name} to treat it as opaque"
        )
    if not layer.transparent and image.shape[0] == 4:
        if bool((image[3] < 1).any()):
            raise CliError(
                f"--image {source} has transparent pixels, but {layer.name!r} ({layer.role}) is opaque: "
                "give an RGB image"
            )
        image = image[:3]
    return image


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[C, H, W]`` to cover ``size`` and centre-cropped; RGBA resized in premultiplied space."""
    from .data.transforms import resize_foreground, resize_opaque

    if image.shape[0] == 4:
        rgb, alpha = resize_foreground(image[None, :3], image[None, 3:], *size, "bicubic")
        return torch.cat([rgb, alpha], dim=1)[0]
    return resize_opaque(image[None], *size, "bicubic")[0]


def load_first_frames(
    request: tasks.TaskRequest,
    images: dict[str, str],
    opaque: Sequence[str],
    options: tasks.TaskOptions,
    resize: bool,
) -> dict[str, FirstFrame]:
    """Every ``--image LAYER=PATH`` as that layer's first frame, of one size: ``--height``/``--width``
    (with ``--resize`` and without them: the model's size), else the first image's."""
    stray = sorted(set(opaque) - set(images))
    if stray:
        raise CliError(f"--opaque given for {stray} without an --image for that layer")
    size: tuple[int, int] | None = None
    if resize:
        geometry = tasks.model_geometry(request)
        size = (options.height or geometry.default_height, options.width or geometry.default_width)
    elif options.height is not None and options.width is not None:
        size = (options.height, options.width)
    first_frames: dict[str, FirstFrame] = {}
    for name, path in images.items():
        frames = read_frames(path)
        source = f"{name}={path}"
        if frames.shape[0] != 1:
            raise CliError(
                f"--image {source} has {frames.shape[0]} frames: give one image, the layer's first frame"
            )
        image = first_frame_image(
            request.layout.layer(name), request.layout, frames[0], source, name in opaque
        )
        found = (int(image.shape[-2]), int(image.shape[-1]))
        size = size or found
        if found != size:
            if not resize:
                raise CliError(
                    f"--image {source} is {found[0]}x{found[1]}, but the run is {size[0]}x{size[1]} "
                    "(--height/--width or the first --image): pass --resize to resize it"
                )
            image = resize_image(image, size)
        first_frames[name] = first_frame_only(image, opaque=name in opaque)
    return first_frames


# ------------------------------------------------------------------------------------------ tasks
def read_conditions(
    args: argparse.Namespace, request: tasks.TaskRequest, options: tasks.TaskOptions
) -> tuple[dict[str, torch.Tensor | FirstFrame], list[str]]:
    """The task's conditions (``--input``/``--alpha`` clips or ``--image`` first frames) and their files."""
    if request.task_layout.spec.first_frame_roles:
        images = pairs(args.image, "--image")
        tasks.check_condition_names(request, list(images), tuple(images), options)
        first_frames = load_first_frames(request, images, args.opaque or [], options, args.resize)
        return dict(first_frames), list(images.values())
    inputs = pairs(args.input, "--input")
    alphas = pairs(args.alpha, "--alpha")
    tasks.check_condition_names(request, list(inputs))
    return dict(load_inputs(inputs, alphas, trim=options.trim)), [*inputs.values(), *alphas.values()]


def run_task(args: argparse.Namespace, pipeline: LayerFlowPipeline | None = None) -> Path:
    """Check everything, read the inputs, run the task with :func:`layerflow.tasks.run`, write the folder
    (with ``pipeline``: ``args.model`` already loaded, as a jobs file's videos share it)."""
    options = task_options(args)
    prompts = pairs(args.prompt, "--prompt")
    request = tasks.check_request(args.model, TASK_COMMANDS[args.command], prompts, options)
    conditions, files = read_conditions(args, request, options)
    conditions = tasks.check_conditions(request, conditions, options)
    output = Path(args.output)
    check_output(output, overwrite=args.overwrite, marker=MANIFEST_NAME, inputs=[args.model, *files])
    with folder_lock(output):  # no other writer of the folder runs meanwhile
        result = tasks.run(pipeline or args.model, request.task, prompts, conditions, options)
        result.settings["model"] = str(args.model)
        try:
            return result.save(
                output,
                fps=args.fps,
                seed=args.seed,
                formats=args.formats,
                alpha=args.alpha_mode,
                overwrite=args.overwrite,
            )
        except ValueError as error:  # e.g. NaN/inf frames: nothing written
            raise CliError(str(error)) from error


def run_job_file(args: argparse.Namespace) -> str:
    """``--jobs FILE``: this process's share of the file's videos (:mod:`layerflow.jobs`), each as one
    ``run_task`` with the job's prompts, inputs, seed and output; the model is loaded once."""
    from .jobs import Job, launch_rank, read_jobs, run_jobs

    jobs = read_jobs(args.jobs, command=args.command)
    rank, world_size = launch_rank()
    if world_size > 1 and args.device is None and torch.cuda.is_available():  # one GPU per process
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
    loaded: list[LayerFlowPipeline] = []

    def run_one(job: Job) -> Path:
        job_args = argparse.Namespace(**vars(args))
        job_args.prompt = [f"{name}={text}" for name, text in job.prompts.items()]
        job_args.input = [f"{name}={path}" for name, path in job.inputs.items()]
        job_args.alpha = [f"{name}={path}" for name, path in job.alphas.items()]
        job_args.image = [f"{name}={path}" for name, path in job.images.items()]
        job_args.output = str(job.output)
        job_args.seed = args.seed if job.seed is None else job.seed
        if not loaded:
            options = task_options(job_args)
            request = tasks.check_request(args.model, TASK_COMMANDS[args.command], job.prompts, options)
            loaded.append(tasks.load_pipeline(args.model, request.device, options))
        return run_task(job_args, loaded[0])

    return run_jobs(jobs, run_one, rank, world_size).summary(rank, world_size)


# ------------------------------------------------------------------------------------------ info
def describe(path: str | Path) -> str:
    """A short description of a model folder, an output folder, an official checkpoint or a media input."""
    from .json_files import read_json_object
    from .pipelines.folders import read_model_index

    path = Path(path)
    if (path / "model_index.json").is_file():
        index = read_model_index(path, ())
        lines = [f"LayerFlow model folder {path}"]
        layout = LayerLayout.from_dict(index["layout"]) if "layout" in index else LayerLayout.official()
        lines.append(f"  layers: {[f'{s.name} ({s.role})' for s in layout.layers]}, alpha: {layout.alpha}")
        lines.append(
            f"  variant: {layout.variant or 'none (project layout)'}, tasks: {list(layout.tasks)}, "
            f"VAE pass: {layout.vae_pass}"
            + (", first frame duplicated" if layout.duplicate_first_frame else "")
            + (
                f", condition = last {layout.condition_tail_latents} latents of the condition clip"
                if layout.condition_tail_latents
                else ""
            )
        )
        for name, entry in index.items():
            if isinstance(entry, list) and len(entry) == 2:
                state = (
                    "present" if (path / name).is_dir() else ("not used" if entry[0] is None else "MISSING")
                )
                lines.append(f"  {name}: {entry[1]} ({state})")
        config_file = path / "transformer" / "config.json"
        if config_file.is_file():
            config = read_json_object(config_file)
            keys = (
                "num_layers",
                "num_attention_heads",
                "attention_head_dim",
                "num_layer_prompts",
                "layer_embedder",
                "position_mode",
                "learned_position_frames",
                "max_text_seq_length",
            )
            lines.append("  transformer: " + ", ".join(f"{k}={config.get(k)}" for k in keys))
        adapters = path / "transformer" / "adapters"
        if adapters.is_dir():
            lines.append(f"  adapters: {sorted(p.name for p in adapters.iterdir())}")
        return "\n".join(lines)
    if (path / MANIFEST_NAME).is_file():
        manifest = read_manifest(path)
        layers = ", ".join(f"{layer.name} ({layer.kind})" for layer in manifest.layers)
        return (
            f"LayerFlow output {path}: task {manifest.task}, {manifest.num_frames} frames of "
            f"{manifest.height}x{manifest.width} at {manifest.fps} fps, seed {manifest.seed}; layers: {layers}"
        )
    if path.is_dir() and ((path / "latest").is_file() or (path / "mp_rank_00_model_states.pt").is_file()):
        from .convert import find_checkpoint_file

        return (
            f"official LayerFlow checkpoint: {find_checkpoint_file(path)} (convert with `layerflow convert`)"
        )
    frames = read_frames(path)
    kind = "RGBA" if frames.shape[1] == 4 else "RGB"
    return f"{path}: {frames.shape[0]} {kind} frames of {frames.shape[2]}x{frames.shape[3]}"


# ------------------------------------------------------------------------------------------ parser
def add_first_frame_options(parser: argparse.ArgumentParser) -> None:
    """``animate``'s inputs: first-frame images, which of them are opaque, resizing, the splice mode."""
    parser.add_argument(
        "--image",
        action="append",
        metavar="LAYER=PATH",
        help="a layer's first frame: an RGBA cutout for a transparent layer, RGB for background/composite",
    )
    parser.add_argument(
        "--opaque",
        action="append",
        metavar="LAYER",
        help="treat an RGB image for a transparent layer as opaque",
    )
    parser.add_argument(
        "--resize",
        action="store_true",
        help="resize (cover, centre crop) images to --height/--width (default: the model's size)",
    )
    parser.add_argument(
        "--first-frame-mode",
        choices=("trained", "training-free"),
        help="splice first frames clean (a model trained for animate) or re-noised to each step "
        "(training-free; default for models not trained for it)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerflow", description="Layer-aware video generation (LayerFlow)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)
    add_task_commands(commands)
    add_convert_command(commands)
    info = commands.add_parser("info", help="describe a model folder, output folder, checkpoint or input")
    info.add_argument("path")
    evaluate = commands.add_parser(
        "eval", help="quality metrics of an output folder (recomposition, alpha, flicker, adherence)"
    )
    evaluate.add_argument("output", help="an output folder written by the pipeline (with manifest.json)")
    evaluate.add_argument("--reference", help="ground-truth sample folder in the project's dataset layout")
    evaluate.add_argument(
        "--report-dir", help="where to write metrics.json / metrics.md (default: the output folder)"
    )
    for name, text in DELEGATED_COMMANDS.items():
        # These commands own their options; `layerflow train -h` shows them.
        delegated = commands.add_parser(name, help=text, add_help=False)
        delegated.add_argument("arguments", nargs=argparse.REMAINDER)
    return parser


def add_task_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """One sub-command per task: model, output or jobs file, prompts, inputs, task and output options."""
    helps = {
        "generate": "generate every layer from per-layer prompts",
        "fg2bg": "generate background and composite for a given foreground",
        "bg2fg": "generate foreground and composite for a given background",
        "decompose": "decompose a composite video into foreground and background",
        "animate": "animate first frames (an RGBA cutout, a background plate): every layer generated",
    }
    for name, text in helps.items():
        task = commands.add_parser(name, help=text, description=text)
        task.add_argument(
            "model", help="a LayerFlow model folder (from `layerflow convert` or save_pretrained)"
        )
        task.add_argument("-o", "--output", help="output folder (PNG sequences, videos, manifest)")
        task.add_argument(
            "--jobs",
            metavar="FILE",
            help="many videos: one JSON line per video (output, prompts, inputs, alphas, seed) instead of "
            "-o/-p/-i/-a; split across the processes of torchrun / accelerate launch; finished ones skipped",
        )
        task.add_argument(
            "-p", "--prompt", action="append", metavar="LAYER=TEXT", help="one per prompted layer"
        )
        if name == "animate":
            add_first_frame_options(task)
        elif name != "generate":
            task.add_argument(
                "-i", "--input", action="append", metavar="LAYER=PATH", help="condition layer input"
            )
            task.add_argument(
                "-a", "--alpha", action="append", metavar="LAYER=PATH", help="separate alpha matte"
            )
        add_task_options(task, conditional=name not in ("generate", "animate"))
        add_output_options(task)
        task.add_argument("--overwrite", action="store_true")


def add_convert_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``layerflow convert``: an official checkpoint into a LayerFlow model folder."""
    convert = commands.add_parser("convert", help="convert an official LayerFlow checkpoint")
    convert.add_argument("official", help="experiment folder (with 'latest'), iteration folder or .pt file")
    convert.add_argument("out", help="output folder")
    convert.add_argument(
        "--base", help="local diffusers CogVideoX-2B folder to take vae/text_encoder/tokenizer from"
    )
    convert.add_argument(
        "--variant",
        choices=sorted(OFFICIAL_VARIANTS),
        help="the official variant (default: detected from the checkpoint; required when ambiguous)",
    )
    convert.add_argument(
        "--lora",
        choices=("adapters", "merge"),
        default="adapters",
        help="keep motion/content LoRAs as adapters, or merge the content LoRA into the weights",
    )
    convert.add_argument("--dtype", choices=sorted(DTYPES), help="store weights in this dtype")
    convert.add_argument(
        "--text-length", type=int, default=226, help="tokens per layer prompt (official 226)"
    )
    convert.add_argument(
        "--latent-size",
        type=int,
        nargs=2,
        default=(60, 90),
        metavar=("H", "W"),
        help="latent size (official 60 90)",
    )
    convert.add_argument("--overwrite", action="store_true")


#: Sub-commands whose own ``main(argv, prog=...)`` parses every option after the command name.
DELEGATED_COMMANDS = {
    "train": "train one stage of the three-stage recipe (see `layerflow train -h`)",
    "demo": "run the embedded CPU demo: synthetic data, 3 training stages, 4 tasks, metrics report",
    "recompose": "composite an output folder's layers (some replaced by your frames) into a new folder",
    "edit": "keep one layer, regenerate the other from a new prompt (fg2bg / bg2fg), recompose",
}


def _run_delegated(command: str, argv: list[str]) -> int:
    if command == "train":
        from .training import main as train_main

        return train_main(argv, prog="layerflow train")
    if command == "demo":
        from .demo import main as demo_main

        return demo_main(argv, prog="layerflow demo")
    if command in ("recompose", "edit"):
        from .editing.commands import main as editing_main

        return editing_main(command, argv)
    raise AssertionError(f"no runner for delegated command {command!r}")


def run_eval(args: argparse.Namespace) -> None:
    from .metrics import evaluate_output_dir

    try:
        report = evaluate_output_dir(args.output, reference=args.reference)
    except (FileNotFoundError, ValueError) as error:
        raise CliError(str(error)) from error
    print(report.to_markdown())
    written = report.save(args.report_dir or args.output)
    print("wrote " + ", ".join(str(path) for path in written))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in DELEGATED_COMMANDS:
        return _run_delegated(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        if args.command in TASK_COMMANDS and args.jobs is not None:
            given = [flag for flag, value in (("-o", args.output), ("-p", args.prompt)) if value]
            given += ["-i/-a"] if getattr(args, "input", None) or getattr(args, "alpha", None) else []
            given += ["--image"] if getattr(args, "image", None) else []
            if given:
                raise CliError(f"--jobs gives each video's {'/'.join(given)}: pass them in the jobs file")
            print(run_job_file(args))
        elif args.command in TASK_COMMANDS:
            if args.output is None:
                raise CliError("give -o/--output (or --jobs FILE for many videos)")
            args.prompt = args.prompt or []  # the request check names the layers that need one
            if args.command in ("generate", "animate"):
                args.input, args.alpha = None, None
            print(f"wrote {run_task(args)}")
        elif args.command == "convert":
            from .convert import CONVERSION_RECORD, ConversionError, convert_official_checkpoint

            for flag, values, limit in (
                ("--text-length", [args.text_length], MAX_TEXT_LENGTH),
                ("--latent-size", args.latent_size, MAX_LATENT_SIZE),
            ):
                if not all(1 <= value <= limit for value in values):
                    raise CliError(f"{flag} must be between 1 and {limit}, got {values}")
            inputs = [args.official] + ([args.base] if args.base else [])
            check_output(args.out, overwrite=args.overwrite, marker=CONVERSION_RECORD, inputs=inputs)
            with folder_lock(args.out):
                try:
                    out = convert_official_checkpoint(
                        args.official,
                        args.out,
                        base=args.base,
                        variant=args.variant,
                        lora=args.lora,
                        max_text_seq_length=args.text_length,
                        sample_height=args.latent_size[0],
                        sample_width=args.latent_size[1],
                        dtype=DTYPES[args.dtype] if args.dtype else None,
                        overwrite=args.overwrite,
                    )
                except (ConversionError, FileNotFoundError, FileExistsError, ValueError) as error:
                    raise CliError(str(error)) from error
            print(f"wrote {out}")
        elif args.command == "eval":
            run_eval(args)
        else:
            try:
                print(describe(args.path))
            except (FileNotFoundError, ValueError) as error:
                raise CliError(str(error)) from error
    except (CliError, OutputRefused) as error:
        print(f"layerflow: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
