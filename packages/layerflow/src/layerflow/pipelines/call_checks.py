"""Every check of a pipeline call, run before any model does: arguments against the layout,
the models and each other. Each raises ``ValueError``/``TypeError`` naming the argument, layer or
size at fault. :func:`check_call` validates only; :mod:`.call_plan` derives the call's plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from diffusers.hooks import FasterCacheConfig, MagCacheConfig

from layerflow.codec import check_joint_vae
from layerflow.conditions import FirstFrame, resolve_first_frame_mode, split_conditions
from layerflow.geometry import DEFAULT_CLIP_FRAMES, FrameGeometry, ModelGeometry, check_geometry
from layerflow.layout import LayerLayout, TaskLayout

from .input_checks import check_input_values

#: Layer name -> whole-clip frames, or :func:`~layerflow.conditions.first_frame_only` of an image.
ConditionFrames = Mapping[str, torch.Tensor | FirstFrame]


class CheckedPipeline(Protocol):
    """What the checks read of a :class:`~layerflow.pipelines.LayerFlowPipeline` (a protocol, so
    that this module never imports the pipeline that imports it)."""

    layer_layout: LayerLayout
    tokenizer: Any
    text_encoder: Any
    vae: Any
    transformer: Any
    transparent_vae: Any
    _callback_tensor_inputs: list[str]

    @property
    def geometry(self) -> ModelGeometry: ...


def check_call(
    pipe: CheckedPipeline,
    task: str,
    prompts: Mapping[str, str] | Sequence[str] | None,
    negative_prompts: Mapping[str, str] | Sequence[str] | None,
    conditions: ConditionFrames | None,
    num_frames: int | None,
    height: int | None,
    width: int | None,
    prompt_embeds: torch.Tensor | None,
    negative_prompt_embeds: torch.Tensor | None,
    latents: torch.Tensor | None,
    settings: dict[str, Any],
    *,
    output_type: str,
    num_videos_per_prompt: int,
    max_sequence_length: int,
    callback_on_step_end_tensor_inputs: Sequence[str],
    first_frame_mode: str | None = None,
) -> None:
    """Validate every argument of ``pipe(...)`` against the layout and the models."""
    frames_by_layer, first_frames = split_conditions(conditions)
    task_layout = pipe.layer_layout.for_task(task, first_frames)
    resolve_first_frame_mode(task_layout, first_frame_mode)
    if output_type not in ("pt", "np", "latent"):
        raise ValueError(f"output_type must be 'pt', 'np' or 'latent', got {output_type!r}")
    check_settings(pipe, settings, num_videos_per_prompt, callback_on_step_end_tensor_inputs)
    check_components(pipe, task_layout, decoding=output_type != "latent")
    if max_sequence_length != pipe.geometry.text_tokens_per_prompt:
        raise ValueError(
            f"max_sequence_length={max_sequence_length}, but the transformer takes "
            f"{pipe.geometry.text_tokens_per_prompt}-token layer prompts"
        )
    check_texts(pipe, task_layout, prompts, negative_prompts, prompt_embeds, negative_prompt_embeds, settings)
    check_input_values(
        frames_by_layer,
        guidance_scale=settings["guidance_scale"],
        num_frames=num_frames,
        height=height,
        width=width,
    )
    condition_frames, num_frames, height, width = check_conditions(
        pipe, task_layout, frames_by_layer, num_frames, height, width
    )
    frames = check_frames(pipe, task_layout, num_frames, height, width)
    pipe.transformer.check_inputs(task_layout, frames)
    batch_size = call_batch_size(prompt_embeds, num_videos_per_prompt)
    batch_conditions(condition_frames, batch_size)
    generated = task_layout.generated_latent_frames(frames.clip_latent_frames)
    state_shape = (
        batch_size,
        len(generated),
        pipe.geometry.latent_channels,
        frames.latent_height,
        frames.latent_width,
    )
    if latents is not None and tuple(latents.shape) != state_shape:
        raise ValueError(
            f"latents must have shape {state_shape} (generated latent frames only), got {tuple(latents.shape)}"
        )


def call_batch_size(prompt_embeds: torch.Tensor | None, num_videos_per_prompt: int) -> int:
    """Videos one call generates: the prompt batch (1 for text prompts) x ``num_videos_per_prompt``."""
    return (1 if prompt_embeds is None else prompt_embeds.shape[0]) * num_videos_per_prompt


def check_settings(
    pipe: CheckedPipeline,
    settings: Mapping[str, Any],
    num_videos_per_prompt: int,
    callback_inputs: Sequence[str],
) -> None:
    if settings["unconditional"] not in ("zeros", "encoded"):
        raise ValueError(f"unconditional must be 'zeros' or 'encoded', got {settings['unconditional']!r}")
    if settings["num_inference_steps"] < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {settings['num_inference_steps']}")
    check_guidance_interval(settings["guidance_interval"])
    if num_videos_per_prompt < 1:
        raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
    bad_inputs = sorted(set(callback_inputs) - set(pipe._callback_tensor_inputs))
    if bad_inputs:
        raise ValueError(f"callback tensor inputs {bad_inputs} are not in {pipe._callback_tensor_inputs}")
    check_cache(pipe.transformer, settings)


def check_guidance_interval(interval: Any) -> None:
    """``(start, stop)``: two finite fractions of the steps with ``0 <= start < stop <= 1``."""
    try:
        start, stop = (float(value) for value in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be two numbers (start, stop), got {interval!r}") from None
    if not 0.0 <= start < stop <= 1.0:  # NaN fails every comparison
        raise ValueError(
            f"guidance_interval must satisfy 0 <= start < stop <= 1 (fractions of the steps), got {interval!r}"
        )


def guided_steps(interval: Sequence[float], num_steps: int) -> range:
    """The steps a ``guidance_interval`` guides, counted as diffusers' guiders count them:
    ``int(start * N) <= i < int(stop * N)``."""
    start, stop = interval
    return range(int(start * num_steps), int(stop * num_steps))


def check_cache(transformer: Any, settings: Mapping[str, Any]) -> None:
    """The transformer's diffusers cache fits the call: FasterCache splits the guidance batch in
    halves (it needs guidance); MagCache's ratios are laid out for its ``num_inference_steps``;
    every cache keeps per-step state of one batch size, which a partial guidance interval changes."""
    config = getattr(transformer, "_cache_config", None)
    steps = settings["num_inference_steps"]
    if config is not None and len(guided_steps(settings["guidance_interval"], steps)) != steps:
        raise ValueError(
            f"{type(config).__name__} keeps per-step state of the guidance batch: it needs "
            f"guidance_interval (0, 1), got {tuple(settings['guidance_interval'])}"
        )
    unguided = float(settings["guidance_scale"]) <= 1.0
    if isinstance(config, FasterCacheConfig) and not config.is_guidance_distilled and unguided:
        raise ValueError("FasterCache splits the guidance batch: it needs guidance_scale > 1")
    if isinstance(config, MagCacheConfig) and config.num_inference_steps != settings["num_inference_steps"]:
        raise ValueError(
            f"MagCache is set up for {config.num_inference_steps} steps, the call runs "
            f"{settings['num_inference_steps']}"
        )


def check_frames(
    pipe: CheckedPipeline,
    task_layout: TaskLayout,
    num_frames: int | None,
    height: int | None,
    width: int | None,
) -> FrameGeometry:
    geometry = pipe.geometry
    frames = check_geometry(
        geometry,
        DEFAULT_CLIP_FRAMES if num_frames is None else num_frames,
        height or geometry.default_height,
        width or geometry.default_width,
        pipe.layer_layout,
    )
    if pipe.layer_layout.vae_pass == "joint":
        check_joint_vae(pipe.vae)
    if pipe.layer_layout.alpha == "latent_offset" and pipe.transparent_vae is not None:
        offset_frames = pipe.transparent_vae.num_latent_frames(frames.num_frames)
        if offset_frames != frames.clip_latent_frames[0]:
            raise ValueError(
                f"num_frames={frames.num_frames}: the transparent VAE's offset encoder makes {offset_frames} "
                f"latent frames, the VAE {frames.clip_latent_frames[0]}"
            )
    return frames


def check_components(pipe: CheckedPipeline, task_layout: TaskLayout, decoding: bool) -> None:
    geometry = pipe.geometry
    if geometry.latent_channels != pipe.transformer.config.in_channels:
        raise ValueError(
            f"the VAE makes {geometry.latent_channels}-channel latents, the transformer takes "
            f"{pipe.transformer.config.in_channels}"
        )
    if task_layout.num_prompts > geometry.prompt_slots:
        raise ValueError(
            f"task {task_layout.task!r} uses {task_layout.num_prompts} layer prompts, the transformer has "
            f"{geometry.prompt_slots} prompt slots"
        )
    # The transparent VAE is needed to encode a transparent condition or to decode a transparent layer.
    transparent_condition = any(layer.role == "foreground" for layer in task_layout.condition_layers)
    if (
        pipe.layer_layout.alpha == "latent_offset"
        and pipe.transparent_vae is None
        and (decoding or transparent_condition)
    ):
        raise ValueError(
            "the layout carries alpha as a latent offset, but the pipeline has no transparent_vae"
        )


def check_texts(
    pipe: CheckedPipeline,
    task_layout: TaskLayout,
    prompts: Mapping[str, str] | Sequence[str] | None,
    negative_prompts: Mapping[str, str] | Sequence[str] | None,
    prompt_embeds: torch.Tensor | None,
    negative_prompt_embeds: torch.Tensor | None,
    settings: Mapping[str, Any],
) -> None:
    """Prompts (or embeddings) and negative prompts against the task, before T5 runs."""
    expected_length = task_layout.num_prompts * pipe.geometry.text_tokens_per_prompt
    if prompt_embeds is None:
        if prompts is None:
            raise ValueError("pass per-layer prompts (or prompt_embeds)")
        task_layout.resolve_prompts(prompts)
        if pipe.text_encoder is None or pipe.tokenizer is None:
            raise ValueError("this pipeline has no text encoder/tokenizer; pass prompt_embeds instead")
    elif prompt_embeds.dim() != 3 or prompt_embeds.shape[1] != expected_length:
        raise ValueError(
            f"prompt_embeds must be [B, {expected_length}, D] ({task_layout.num_prompts} prompts x "
            f"{pipe.geometry.text_tokens_per_prompt} tokens), got {tuple(prompt_embeds.shape)}"
        )
    guided = float(settings["guidance_scale"]) > 1.0
    if not guided and (negative_prompts is not None or negative_prompt_embeds is not None):
        raise ValueError("negative prompts act through guidance: they need guidance_scale > 1")
    if negative_prompt_embeds is None and negative_prompts is not None:
        if settings["unconditional"] == "zeros":
            raise ValueError("negative prompts need unconditional='encoded' (official CFG uses zeros)")
        negative_texts([layer.name for layer in task_layout.prompt_layers], negative_prompts)
    reference = tuple(prompt_embeds.shape) if prompt_embeds is not None else (1, expected_length)
    if (
        negative_prompt_embeds is not None
        and tuple(negative_prompt_embeds.shape)[: len(reference)] != reference
    ):
        raise ValueError(
            f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} must match prompt_embeds "
            f"{reference}"
        )


def check_conditions(
    pipe: CheckedPipeline,
    task_layout: TaskLayout,
    conditions: Mapping[str, torch.Tensor] | None,
    num_frames: int | None,
    height: int | None,
    width: int | None,
) -> tuple[dict[str, torch.Tensor], int | None, int | None, int | None]:
    """Validate condition frames (names, channels, frame counts, sizes) and return them batched.

    First-frame layers (``task_layout.first_frames``) are one-frame clips: they set the size, not
    the frame count.
    """
    conditions = dict(conditions or {})
    needed = [layer.name for layer in (*task_layout.condition_layers, *task_layout.first_frame_layers)]
    unknown = sorted(set(conditions) - set(needed))
    if unknown:
        raise ValueError(
            f"conditions given for {unknown}, but task {task_layout.task!r} conditions on {needed}"
        )
    if task_layout.spec.first_frame_roles and not task_layout.first_frames:
        names = [layer.name for layer in task_layout.layers]
        raise ValueError(
            f"task {task_layout.task!r} needs the first frame of at least one layer of {names} "
            "(first_frame_only(image))"
        )
    missing = [name for name in needed if name not in conditions]
    if missing:
        raise ValueError(f"task {task_layout.task!r} needs condition frames for layer(s) {missing}")
    batched: dict[str, torch.Tensor] = {}
    # Whole clips first, so a first frame's size is checked against theirs.
    for layer in (*task_layout.condition_layers, *task_layout.first_frame_layers):
        frames = conditions[layer.name]
        what = f"first frame of {layer.name!r}" if layer.first_frame else f"condition {layer.name!r}"
        if not isinstance(frames, torch.Tensor) or frames.dim() not in (4, 5):
            raise ValueError(f"condition {layer.name!r} must be a [T, C, H, W] or [B, T, C, H, W] tensor")
        frames = frames if frames.dim() == 5 else frames.unsqueeze(0)
        channels = frames.shape[2]
        allowed = (4,) if layer.has_alpha else ((3, 4) if layer.role == "foreground" else (3,))
        if channels not in allowed:
            kind = "RGBA" if allowed == (4,) else "RGB"
            hint = (
                " (an image without alpha: first_frame_only(image, opaque=True) treats it as opaque)"
                if layer.first_frame and kind == "RGBA" and channels == 3
                else ""
            )
            raise ValueError(f"{what} must be {kind} (C in {allowed}), got C={channels}{hint}")
        t, h, w = frames.shape[1], frames.shape[3], frames.shape[4]
        if layer.first_frame and t != 1:
            raise ValueError(f"{what} must be one frame [1, C, H, W], got {t} frames")
        checks = [("height", h, height), ("width", w, width)]
        if not layer.first_frame:
            checks.insert(0, ("frames", t, num_frames))
        for label, value, expected in checks:
            if expected is not None and value != expected:
                raise ValueError(f"{what} has {label}={value}, expected {expected}")
        num_frames = num_frames if layer.first_frame else t
        height, width = h, w
        batched[layer.name] = frames.float()
    return batched, num_frames, height, width


def batch_conditions(conditions: dict[str, torch.Tensor], batch_size: int) -> dict[str, torch.Tensor]:
    for name, frames in conditions.items():
        if frames.shape[0] not in (1, batch_size):
            raise ValueError(f"condition {name!r} has batch {frames.shape[0]}, expected 1 or {batch_size}")
    return {name: frames.expand(batch_size, *frames.shape[1:]) for name, frames in conditions.items()}


def negative_texts(
    names: Sequence[str], negative_prompts: Mapping[str, str] | Sequence[str] | None
) -> list[str]:
    """Negative prompts in prompt order; layers without one get the empty prompt."""
    if negative_prompts is None:
        return [""] * len(names)
    if isinstance(negative_prompts, str):
        raise TypeError("negative_prompts must be a mapping layer name -> text or a list, got a single str")
    if isinstance(negative_prompts, Mapping):
        unknown = sorted(set(negative_prompts) - set(names))
        if unknown:
            raise ValueError(f"negative prompts given for {unknown}; the prompted layers are {list(names)}")
        return [negative_prompts.get(name, "") for name in names]
    texts = list(negative_prompts)
    if len(texts) != len(names):
        raise ValueError(f"{len(texts)} negative prompts for {len(names)} prompted layers {list(names)}")
    return texts
