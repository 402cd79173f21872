"""The task runner the CLI, ``layerflow edit`` and the demo share: one model task, checked and run.

``run(model, task, prompts, conditions, options)`` takes a model folder (checked, then loaded on the
options' device) or a loaded pipeline, and returns the pipeline's output with the settings an output
folder's manifest records. Callers that want every problem reported before the model loads (the
CLI) call :func:`check_request` and :func:`check_conditions` first; :func:`run` calls them too.
Problems are :class:`~layerflow.cli_checks.CliError` one-liners naming the setting.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from .cli_checks import CliError, check_device, check_model_dir
from .conditions import (
    FIRST_FRAME_MODES,
    FirstFrame,
    FirstFrameMode,
    resolve_first_frame_mode,
    split_conditions,
)
from .layout import LayerLayout, TaskLayout
from .presets import MEMORIES, SPEEDS, Preset

if TYPE_CHECKING:
    from .geometry import ModelGeometry
    from .pipelines import LayerFlowOutput, LayerFlowPipeline
    from .pipelines.pipeline_layerflow import Unconditional
    from .pipelines.scheduling import SchedulerKind

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: Upper bounds checked before any model loads: past them a run only fails late (memory) or overflows.
LIMITS = {"frames": 1024, "height": 8192, "width": 8192, "steps": 1000}
MAX_GUIDANCE = 100.0
#: The seeds ``torch.Generator.manual_seed`` accepts.
SEED_RANGE = (-(2**63), 2**64 - 1)


@dataclass(frozen=True)
class TaskOptions:
    """How a task samples and where; ``None`` takes the input's size or the model's default.

    ``trim``: condition clips longer than the run (``frames``, else the most frames the model runs
    that they hold) give their first frames; without it any other length is an error.
    The error messages name the CLI flags: the CLI is where a user sets them.
    """

    frames: int | None = None
    trim: bool = False
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    dynamic_cfg: bool | None = None
    guidance_interval: tuple[float, float] | None = None
    unconditional: str | None = None
    negative_prompts: Mapping[str, str] = field(default_factory=dict)
    isolate_conditions: bool = False
    scheduler: str = "dpm"
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    speed: str = "exact"
    memory: str = "default"
    first_frame_mode: str | None = None

    def check(self) -> None:
        """Sizes and steps within :data:`LIMITS`, the guidance scale finite and within
        :data:`MAX_GUIDANCE`, the seed one torch takes, negative prompts are encoded."""
        for flag, limit in LIMITS.items():
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise CliError(f"--{flag} must be >= 1, got {value}")
            if value is not None and value > limit:
                raise CliError(f"--{flag} must be <= {limit}, got {value}")
        if self.guidance is not None and not math.isfinite(self.guidance):
            raise CliError(f"--guidance must be a finite number, got {self.guidance}")
        if self.guidance is not None and abs(self.guidance) > MAX_GUIDANCE:
            raise CliError(
                f"--guidance must be between -{MAX_GUIDANCE:g} and {MAX_GUIDANCE:g}, got {self.guidance:g}"
            )
        if self.guidance_interval is not None:
            from .pipelines.call_checks import check_guidance_interval

            try:
                check_guidance_interval(self.guidance_interval)
            except ValueError as error:
                raise CliError(f"--guidance-interval: {error}") from None
        if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise CliError(f"--seed must be between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {self.seed}")
        if self.speed not in SPEEDS:
            raise CliError(f"--speed must be one of {', '.join(SPEEDS)}, got {self.speed!r}")
        if self.memory not in MEMORIES:
            raise CliError(f"--memory must be one of {', '.join(MEMORIES)}, got {self.memory!r}")
        if self.first_frame_mode is not None and self.first_frame_mode not in FIRST_FRAME_MODES:
            modes = ", ".join(mode.replace("_", "-") for mode in FIRST_FRAME_MODES)
            raise CliError(f"--first-frame-mode must be one of {modes}, got {self.first_frame_mode!r}")
        if self.negative_prompts and self.unconditional == "zeros":
            raise CliError("--negative prompts are encoded: they cannot be used with --unconditional zeros")


@dataclass(frozen=True)
class TaskRequest:
    """A request checked against a model folder (``model``, as given) or a loaded pipeline (``None``)."""

    model: str | os.PathLike[str] | None
    task: str
    layout: LayerLayout
    device: str

    @property
    def task_layout(self) -> TaskLayout:
        return self.layout.for_task(self.task)

    @property
    def condition_names(self) -> list[str]:
        return [layer.name for layer in self.task_layout.condition_layers]


@dataclass(frozen=True)
class TaskResult:
    """The pipeline's output and the settings an output folder of it records."""

    output: LayerFlowOutput
    settings: dict[str, Any]

    def save(self, out_dir: str | os.PathLike[str], **options: Any) -> Path:
        """Write the first sample as an output folder (``options`` as :meth:`LayerFlowOutput.save`)."""
        return self.output.save(out_dir, settings=self.settings, **options)


def _layout_of(index: Mapping[str, Any]) -> LayerLayout:
    return LayerLayout.from_dict(index["layout"]) if "layout" in index else LayerLayout.official()


def model_layout(model_dir: str | os.PathLike[str]) -> LayerLayout:
    """The layout of a model folder, after checking every component's config and weights."""
    index = check_model_dir(Path(model_dir))
    try:
        return _layout_of(index)
    except ValueError as error:
        raise CliError(f"{Path(model_dir) / 'model_index.json'}: 'layout': {error}") from error


def check_request(
    model: str | os.PathLike[str] | LayerFlowPipeline,
    task: str,
    prompts: Mapping[str, str],
    options: TaskOptions,
) -> TaskRequest:
    """Options, device, model folder and prompts, before any input is read or model loaded."""
    options.check()
    device = check_device(options.device)
    if isinstance(model, str | os.PathLike):  # a folder, else a loaded pipeline
        request = TaskRequest(model, task, model_layout(model), device)
    else:
        request = TaskRequest(None, task, model.layer_layout, device)
    try:
        request.task_layout.resolve_prompts(prompts)
    except (ValueError, TypeError) as error:
        raise CliError(str(error)) from error
    return request


def check_condition_names(
    request: TaskRequest,
    names: list[str],
    first_frames: tuple[str, ...] = (),
    options: TaskOptions | None = None,
) -> None:
    """The condition layers given are exactly the task's; ``first_frames`` (``--image``) are layers
    the task takes a first frame of, spliced as ``options.first_frame_mode`` says."""
    options = options or TaskOptions()
    try:
        task_layout = request.layout.for_task(request.task, first_frames)
    except ValueError as error:
        raise CliError(str(error)) from error
    if task_layout.spec.first_frame_roles and not first_frames:
        raise CliError(f"task {request.task!r} needs --image LAYER=PATH for at least one layer")
    try:
        resolve_first_frame_mode(task_layout, options.first_frame_mode)
    except ValueError as error:
        raise CliError(str(error)) from error
    needed = request.condition_names
    whole = sorted(set(names) - set(first_frames))
    if whole != sorted(needed):
        raise CliError(f"task {request.task!r} needs --input for {needed}, got {whole or 'none'}")


def model_geometry(request: TaskRequest) -> ModelGeometry:
    """The geometry of the request's model folder (sizes, compression), read from its configs."""
    from .models.configs import folder_geometry

    if request.model is None:
        raise ValueError("a loaded pipeline's geometry is pipe.geometry; the request has no model folder")
    try:
        return folder_geometry(request.model)
    except (FileNotFoundError, ValueError) as error:
        raise CliError(str(error)) from error


def check_conditions(
    request: TaskRequest, conditions: Mapping[str, torch.Tensor | FirstFrame], options: TaskOptions
) -> dict[str, torch.Tensor | FirstFrame]:
    """Condition layers, frames and size (from the inputs or the options) against the model's geometry.

    Returns the conditions the run uses: as given, or their first frames with ``options.trim``.
    First-frame conditions (:class:`~layerflow.conditions.FirstFrame`) set the size, never the frame
    count, and are never trimmed.
    """
    from .geometry import DEFAULT_CLIP_FRAMES, check_geometry

    frames_by_layer, first_frames = split_conditions(conditions)
    check_condition_names(request, list(conditions), first_frames, options)
    clips = {name: frames for name, frames in frames_by_layer.items() if name not in first_frames}
    stills = {name: conditions[name] for name in first_frames}
    first = next(iter(clips.values()), None)
    if request.model is None:  # a loaded pipeline checks its own call
        return {**(_trimmed(clips, options.frames) if options.trim else clips), **stills}
    geometry = model_geometry(request)
    found = (first.shape[0], *first.shape[-2:]) if first is not None else None
    frames = options.frames if options.frames is not None else (found[0] if found else DEFAULT_CLIP_FRAMES)
    if found is not None and options.trim:
        if options.frames is None:
            runnable = [n for n in range(1, found[0] + 1) if geometry.frames_ok(request.layout, n)]
            if not runnable:
                raise CliError(f"inputs have {found[0]} frames, fewer than this model runs in one clip")
            frames = runnable[-1]
        if frames > found[0]:
            raise CliError(
                f"inputs have {found[0]} frames, --frames asks for {frames}: --trim takes fewer frames, never more"
            )
        clips = _trimmed(clips, frames)
        found = (frames, *found[1:])
    still_size = next((tuple(frames_by_layer[name].shape[-2:]) for name in first_frames), None)
    default_size = found[1:] if found else (still_size or (geometry.default_height, geometry.default_width))
    height = options.height if options.height is not None else default_size[0]
    width = options.width if options.width is not None else default_size[1]
    if found is not None and (frames, height, width) != found:
        hint = ""
        if frames < found[0]:
            hint = f" (add --trim to use the first {frames})"
        elif frames > found[0]:
            hint = f" (inputs are never padded: ask for at most {found[0]} frames with --trim)"
        raise CliError(
            f"inputs have {found[0]} frames of {found[1]}x{found[2]}, "
            f"but --frames/--height/--width ask for {frames} frames of {height}x{width}{hint}"
        )
    if still_size is not None and still_size != (height, width):
        raise CliError(
            f"first frames are {still_size[0]}x{still_size[1]}, but the run is {height}x{width} "
            "(--height/--width or the inputs)"
        )
    try:
        check_geometry(geometry, frames, height, width, request.layout)
    except ValueError as error:
        runnable = [n for n in range(1, frames) if geometry.frames_ok(request.layout, n)]
        trimmable = found is not None and runnable and not geometry.frames_ok(request.layout, frames)
        hint = f"; or add --trim to use the first {runnable[-1]} frames of the inputs" if trimmable else ""
        raise CliError(f"{error}{hint}") from error
    check_memory(request.layout, frames, height, width)
    return {**clips, **stills}


def host_memory() -> int | None:
    """This machine's physical memory in bytes (``None`` where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(layout: LayerLayout, frames: int, height: int, width: int) -> None:
    """The decoded clips of one sample fit in this machine's memory, counted at their least (RGB,
    2 bytes a value): within :data:`LIMITS` a size like ``--frames 1024 --height 8192`` would
    otherwise run for minutes before memory runs out."""
    needed = len(layout.clips) * frames * 3 * height * width * 2
    total = host_memory()
    if total is not None and needed > total:
        raise CliError(
            f"--frames {frames} at {height}x{width} needs at least {needed / 2**30:.0f} GiB for the "
            f"{len(layout.clips)} decoded clips alone, more than this machine's {total / 2**30:.0f} GiB of memory"
        )


def _trimmed(conditions: Mapping[str, torch.Tensor], frames: int | None) -> dict[str, torch.Tensor]:
    """Every condition clip's first ``frames`` frames (``None``: as given)."""
    return {name: clip[:frames] for name, clip in conditions.items()}


def load_pipeline(model: str | os.PathLike[str], device: str, options: TaskOptions) -> LayerFlowPipeline:
    """The model folder as a pipeline on ``device``, with the options' dtype, scheduler and preset."""
    from .pipelines import LayerFlowPipeline
    from .pipelines.scheduling import switch_scheduler

    if options.dtype:
        dtype = DTYPES[options.dtype]
    else:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    pipe = LayerFlowPipeline.from_pretrained(model, dtype=dtype)
    if options.scheduler != "dpm":
        pipe.scheduler = switch_scheduler(pipe.scheduler, cast("SchedulerKind", options.scheduler))  # checked
    pipe.enable_preset(Preset(options.speed, options.memory), device)  # type: ignore[arg-type]  # checked
    return pipe


def run(
    model: str | os.PathLike[str] | LayerFlowPipeline,
    task: str,
    prompts: Mapping[str, str],
    conditions: Mapping[str, torch.Tensor | FirstFrame] | None = None,
    options: TaskOptions | None = None,
    **pipeline_options: Any,
) -> TaskResult:
    """Check the request, load the model (a folder) and sample ``task``; ``pipeline_options`` go to
    the pipeline call (e.g. a step callback). The generator is a CPU one seeded with ``options.seed``,
    so a seed gives the same output on every device."""
    options = options or TaskOptions()
    conditions = dict(conditions or {})
    request = check_request(model, task, prompts, options)
    conditions = check_conditions(request, conditions, options)
    pipe = (
        cast("LayerFlowPipeline", model)  # check_request: a pipeline when no model folder was named
        if request.model is None
        else load_pipeline(request.model, request.device, options)
    )
    unconditional = options.unconditional or ("encoded" if options.negative_prompts else None)
    try:
        output: LayerFlowOutput = pipe(  # type: ignore[assignment]  # return_dict is True
            dict(prompts),
            task,
            conditions=conditions or None,
            negative_prompts=dict(options.negative_prompts) or None,
            num_frames=options.frames,
            height=options.height,
            width=options.width,
            num_inference_steps=options.steps,
            guidance_scale=options.guidance,
            use_dynamic_cfg=options.dynamic_cfg,
            guidance_interval=options.guidance_interval,
            unconditional=cast("Unconditional | None", unconditional),  # checked
            isolate_conditions=options.isolate_conditions,
            first_frame_mode=cast(FirstFrameMode | None, options.first_frame_mode),  # checked
            generator=torch.Generator(device="cpu").manual_seed(options.seed),
            **pipeline_options,
        )
    except ValueError as error:
        raise CliError(str(error)) from error
    settings = {
        "model": str(request.model) if request.model is not None else None,
        "steps": output.settings["num_inference_steps"],
        "guidance_scale": output.settings["guidance_scale"],
        "dynamic_cfg": output.settings["use_dynamic_cfg"],
        "scheduler": options.scheduler,
        "unconditional": output.settings["unconditional"],
        "negative_prompts": dict(options.negative_prompts),
        "isolate_conditions": options.isolate_conditions,
        "alpha_representation": request.layout.alpha,
        "vae_pass": request.layout.vae_pass,
        "variant": request.layout.variant,
    }
    start, stop = output.settings["guidance_interval"]
    if (start, stop) != (0, 1):  # recorded when partial: manifests of every-step guidance read as before
        settings["guidance_interval"] = [float(start), float(stop)]
    if "first_frame_mode" in output.settings:  # the layers given as first frames, and how they were spliced
        settings["first_frames"] = list(split_conditions(conditions)[1])
        settings["first_frame_mode"] = output.settings["first_frame_mode"]
    # The preset, when not the default: manifests of exact, on-device runs read as they always have.
    preset = {
        key: output.settings[key]
        for key, value in Preset().to_dict().items()
        if output.settings[key] != value
    }
    return TaskResult(output, {**settings, **preset})
