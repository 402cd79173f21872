"""``LayerFlowPipeline``: the four LayerFlow tasks on diffusers' CogVideoX components.

One call samples every layer of a video jointly: the layer prompts become ``L x max_sequence_length``
text tokens, the layer clips are concatenated along the latent frame axis, and for the conditional
tasks the clean condition clips are spliced into their slots before every transformer call (both
CFG branches) and never touched by the scheduler, so they come back bit-identical.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_ddim_cogvideox import CogVideoXDDIMScheduler
from diffusers.schedulers.scheduling_dpm_cogvideox import CogVideoXDPMScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from layer_embeddings import LayerPromptEncoder
from layerflow.atomic import apply_umask, apply_umask_tree
from layerflow.codec import ClipCodec, check_joint_vae
from layerflow.geometry import DEFAULT_CLIP_FRAMES, FrameGeometry, ModelGeometry, check_geometry
from layerflow.layout import LayerLayout, TaskLayout
from layerflow.media.output import DEFAULT_FORMATS, AlphaMode, OutputLayer, write_output_dir
from layerflow.models.adapters import merged_for_inference
from layerflow.models.configs import model_geometry
from layerflow.variants import OFFICIAL_SAMPLING

from .input_checks import check_input_values

OutputType = Literal["pt", "np", "latent"]
Unconditional = Literal["zeros", "encoded"]
ConditionFrames = Mapping[str, torch.Tensor]


@dataclass
class LayerFlowOutput(BaseOutput):
    """Per-layer frames and the latents they were decoded from.

    Attributes:
        layers: layer name -> frames. ``"pt"``: ``[B, T, C, H, W]`` float in [0, 1]; ``"np"``:
            ``[B, T, H, W, C]``. Transparent layers are straight-alpha RGBA (C = 4) whenever the layout
            carries alpha, opaque layers RGB. Empty for ``output_type="latent"``.
        latents: ``[B, F, C, h, w]``, the full latent sequence in layout (official) frame order,
            condition latents included (17 frames for the RGBA fg2bg / bg2fg variants).
        task: the task that produced them.
        roles: layer name -> role (``"foreground"``, ``"background"``, ``"composite"``).
        prompts: layer name -> the prompt it was generated with (prompted layers only).
        settings: the sampling settings used (steps, guidance scale, dynamic CFG, unconditional text).
    """

    layers: dict[str, Any]
    latents: torch.Tensor
    task: str
    roles: dict[str, str]
    prompts: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)

    def save(
        self,
        out_dir: str | os.PathLike[str],
        *,
        sample: int = 0,
        fps: int = 8,
        seed: int | None = None,
        settings: Mapping[str, Any] | None = None,
        formats: Sequence[str] = DEFAULT_FORMATS,
        alpha: AlphaMode = "straight",
        overwrite: bool = False,
    ) -> Path:
        """Write sample ``sample`` as a LayerFlow output folder (``formats``: PNG sequences and videos,
        see :func:`layerflow.media.write_output_dir`; previews; manifest)."""
        if not self.layers or not isinstance(next(iter(self.layers.values())), torch.Tensor):
            raise ValueError("only output_type='pt' results can be saved")
        layers = [
            OutputLayer(name, self.roles[name], frames[sample], self.prompts.get(name))
            for name, frames in self.layers.items()
        ]
        return write_output_dir(
            out_dir,
            layers,
            task=self.task,
            fps=fps,
            seed=seed,
            settings=settings,
            formats=formats,
            alpha=alpha,
            overwrite=overwrite,
        )


#: Sampling settings of the project's own layouts: the official sampler's, but a constant guidance
#: scale instead of the SAT dynamic-CFG quirk. Official variants use :data:`OFFICIAL_SAMPLING`.
#: Every one is a ``__call__`` argument.
SAMPLING_DEFAULTS: Mapping[str, Any] = {**OFFICIAL_SAMPLING, "use_dynamic_cfg": False}


@dataclass(frozen=True)
class CallPlan:
    """Everything ``check_inputs`` established about one call, before any model ran.

    Attributes:
        task_layout: the layout resolved for the task.
        frames: frame count, sizes and latent frames of every clip.
        conditions: condition layer -> frames ``[B, T, C, H, W]`` (already expanded to the batch).
        batch_size: videos generated (prompt batch x ``num_videos_per_prompt``).
        condition_frames, generated_frames: indices into the full latent sequence.
        settings: resolved sampling settings (steps, guidance, dynamic CFG, unconditional text).
        attention_kwargs: what the transformer gets on every call (segment layout included).
    """

    task_layout: TaskLayout
    frames: FrameGeometry
    conditions: dict[str, torch.Tensor]
    batch_size: int
    condition_frames: tuple[int, ...]
    generated_frames: tuple[int, ...]
    settings: dict[str, Any]
    attention_kwargs: dict[str, Any]

    @property
    def guided(self) -> bool:
        return float(self.settings["guidance_scale"]) > 1.0


def dynamic_guidance_scale(guidance_scale: float, timestep: float, num_inference_steps: int) -> float:
    """CogVideoX/SAT "dynamic CFG": ``1 + s(1 - cos(pi ((N - t) / N)^5)) / 2`` with the timestep VALUE ``t``.

    The official LayerFlow sampler uses this (its per-step scale oscillates in [1, 1 + s]); kept as is
    for parity.
    """
    n = num_inference_steps
    return 1.0 + guidance_scale * (1.0 - math.cos(math.pi * ((n - timestep) / n) ** 5.0)) / 2.0


class LayerFlowPipeline(DiffusionPipeline):
    """Generate, complete or decompose layered videos with a :class:`LayerFlowTransformer3DModel`.

    Args:
        tokenizer, text_encoder: the T5 tokenizer and encoder (one prompt per layer).
        vae: an ``AutoencoderKLCogVideoX``.
        transformer: a ``LayerFlowTransformer3DModel``.
        scheduler: ``CogVideoXDPMScheduler`` (official DPM++ 2M SDE sampler) or ``CogVideoXDDIMScheduler``.
        transparent_vae: a :class:`~layerflow.models.LayerFlowTransparentVAE` carrying alpha in the
            foreground latent (``latent_offset`` layouts only).
        layout: the layer layout as :meth:`LayerLayout.to_dict` (stored in ``model_index.json``);
            defaults to the official foreground/background/composite with an alpha clip. An official
            variant's layout (``layerflow convert`` writes it) makes the pipeline run that variant.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae->transparent_vae"  # type: ignore[assignment]  # None in the base
    _optional_components = ["transparent_vae"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: Any,
        vae: Any,
        transformer: Any,
        scheduler: CogVideoXDPMScheduler | CogVideoXDDIMScheduler,
        transparent_vae: Any = None,
        layout: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
            transparent_vae=transparent_vae,
        )
        self.layer_layout = LayerLayout.from_dict(layout) if layout is not None else LayerLayout.official()
        self.register_to_config(layout=self.layer_layout.to_dict())

    @property
    def geometry(self) -> ModelGeometry:
        """Sizes fixed by the current VAE and transformer configs."""
        return model_geometry(self.vae.config, self.transformer.config)

    @property
    def codec(self) -> ClipCodec:
        """The layout's clip codec over the current VAE (and transparent VAE)."""
        return ClipCodec(self.layer_layout, self.geometry, self.vae, self.transparent_vae)

    def sampling_defaults(self) -> dict[str, Any]:
        """Sampling settings used where ``__call__`` gets ``None``: official ones for official variants."""
        official = OFFICIAL_SAMPLING if self.layer_layout.variant is not None else {}
        return {**SAMPLING_DEFAULTS, **official}

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``, with file modes that follow the umask (its safetensors are ``0600``)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        written = [Path(save_directory) / name for name in (*self.components, "model_index.json")]
        for path in written:  # only what it wrote: other files in the folder keep their modes
            if path.is_dir():
                apply_umask_tree(path)
            elif path.is_file():
                apply_umask(path)

    # ------------------------------------------------------------------ memory helpers (real GPUs)
    def enable_vae_slicing(self) -> None:
        self.vae.enable_slicing()

    def enable_vae_tiling(self) -> None:
        if self.layer_layout.vae_pass == "joint":
            raise ValueError("this layout runs the VAE jointly over the whole video: tiling is not possible")
        self.vae.enable_tiling()

    # ------------------------------------------------------------------ validation
    def check_inputs(
        self,
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
        isolate_conditions: bool,
        num_videos_per_prompt: int,
        max_sequence_length: int,
        attention_kwargs: dict[str, Any] | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> CallPlan:
        """Validate every argument against the layout and the models, before any model runs.

        Raises ``ValueError``/``TypeError`` naming the argument, layer or size at fault.
        """
        task_layout = self.layer_layout.for_task(task)
        if output_type not in ("pt", "np", "latent"):
            raise ValueError(f"output_type must be 'pt', 'np' or 'latent', got {output_type!r}")
        self._check_settings(settings, num_videos_per_prompt, callback_on_step_end_tensor_inputs)
        self._check_components(task_layout, decoding=output_type != "latent")
        if max_sequence_length != self.geometry.text_tokens_per_prompt:
            raise ValueError(
                f"max_sequence_length={max_sequence_length}, but the transformer takes "
                f"{self.geometry.text_tokens_per_prompt}-token layer prompts"
            )
        self._check_texts(
            task_layout, prompts, negative_prompts, prompt_embeds, negative_prompt_embeds, settings
        )
        check_input_values(
            conditions,
            guidance_scale=settings["guidance_scale"],
            num_frames=num_frames,
            height=height,
            width=width,
        )
        condition_frames, num_frames, height, width = self._check_conditions(
            task_layout, conditions, num_frames, height, width
        )
        frames = self._check_frames(task_layout, num_frames, height, width)
        self.transformer.check_inputs(task_layout, frames)
        batch_size = (1 if prompt_embeds is None else prompt_embeds.shape[0]) * num_videos_per_prompt
        condition_frames = self._batch_conditions(condition_frames, batch_size)
        condition_latents = task_layout.condition_latent_frames(frames.clip_latent_frames)
        generated = task_layout.generated_latent_frames(frames.clip_latent_frames)
        state_shape = (
            batch_size,
            len(generated),
            self.geometry.latent_channels,
            frames.latent_height,
            frames.latent_width,
        )
        if latents is not None and tuple(latents.shape) != state_shape:
            raise ValueError(
                f"latents must have shape {state_shape} (generated latent frames only), got {tuple(latents.shape)}"
            )
        return CallPlan(
            task_layout=task_layout,
            frames=frames,
            conditions=condition_frames,
            batch_size=batch_size,
            condition_frames=condition_latents,
            generated_frames=generated,
            settings=settings,
            attention_kwargs={
                **self.transformer.attention_kwargs_for(task_layout, frames, isolate_conditions),
                **(attention_kwargs or {}),
            },
        )

    def _check_settings(
        self, settings: Mapping[str, Any], num_videos_per_prompt: int, callback_inputs: Sequence[str]
    ) -> None:
        if settings["unconditional"] not in ("zeros", "encoded"):
            raise ValueError(f"unconditional must be 'zeros' or 'encoded', got {settings['unconditional']!r}")
        if settings["num_inference_steps"] < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {settings['num_inference_steps']}")
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
        bad_inputs = sorted(set(callback_inputs) - set(self._callback_tensor_inputs))
        if bad_inputs:
            raise ValueError(f"callback tensor inputs {bad_inputs} are not in {self._callback_tensor_inputs}")

    def _check_frames(
        self, task_layout: TaskLayout, num_frames: int | None, height: int | None, width: int | None
    ) -> FrameGeometry:
        geometry = self.geometry
        frames = check_geometry(
            geometry,
            DEFAULT_CLIP_FRAMES if num_frames is None else num_frames,
            height or geometry.default_height,
            width or geometry.default_width,
            self.layer_layout,
        )
        if self.layer_layout.vae_pass == "joint":
            check_joint_vae(self.vae)
        if self.layer_layout.alpha == "latent_offset" and self.transparent_vae is not None:
            offset_frames = self.transparent_vae.num_latent_frames(frames.num_frames)
            if offset_frames != frames.clip_latent_frames[0]:
                raise ValueError(
                    f"num_frames={frames.num_frames}: the transparent VAE's offset encoder makes {offset_frames} "
                    f"latent frames, the VAE {frames.clip_latent_frames[0]}"
                )
        return frames

    def _check_components(self, task_layout: TaskLayout, decoding: bool) -> None:
        geometry = self.geometry
        if geometry.latent_channels != self.transformer.config.in_channels:
            raise ValueError(
                f"the VAE makes {geometry.latent_channels}-channel latents, the transformer takes "
                f"{self.transformer.config.in_channels}"
            )
        if task_layout.num_prompts > geometry.prompt_slots:
            raise ValueError(
                f"task {task_layout.task!r} uses {task_layout.num_prompts} layer prompts, the transformer has "
                f"{geometry.prompt_slots} prompt slots"
            )
        # The transparent VAE is needed to encode a transparent condition or to decode a transparent layer.
        transparent_condition = any(layer.role == "foreground" for layer in task_layout.condition_layers)
        if (
            self.layer_layout.alpha == "latent_offset"
            and self.transparent_vae is None
            and (decoding or transparent_condition)
        ):
            raise ValueError(
                "the layout carries alpha as a latent offset, but the pipeline has no transparent_vae"
            )

    def _check_texts(
        self,
        task_layout: TaskLayout,
        prompts: Mapping[str, str] | Sequence[str] | None,
        negative_prompts: Mapping[str, str] | Sequence[str] | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        settings: Mapping[str, Any],
    ) -> None:
        """Prompts (or embeddings) and negative prompts against the task, before T5 runs."""
        expected_length = task_layout.num_prompts * self.geometry.text_tokens_per_prompt
        if prompt_embeds is None:
            if prompts is None:
                raise ValueError("pass per-layer prompts (or prompt_embeds)")
            task_layout.resolve_prompts(prompts)
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError("this pipeline has no text encoder/tokenizer; pass prompt_embeds instead")
        elif prompt_embeds.dim() != 3 or prompt_embeds.shape[1] != expected_length:
            raise ValueError(
                f"prompt_embeds must be [B, {expected_length}, D] ({task_layout.num_prompts} prompts x "
                f"{self.geometry.text_tokens_per_prompt} tokens), got {tuple(prompt_embeds.shape)}"
            )
        guided = float(settings["guidance_scale"]) > 1.0
        if not guided and (negative_prompts is not None or negative_prompt_embeds is not None):
            raise ValueError("negative prompts act through guidance: they need guidance_scale > 1")
        if negative_prompt_embeds is None and negative_prompts is not None:
            if settings["unconditional"] == "zeros":
                raise ValueError("negative prompts need unconditional='encoded' (official CFG uses zeros)")
            _negative_texts([layer.name for layer in task_layout.prompt_layers], negative_prompts)
        reference = tuple(prompt_embeds.shape) if prompt_embeds is not None else (1, expected_length)
        if (
            negative_prompt_embeds is not None
            and tuple(negative_prompt_embeds.shape)[: len(reference)] != reference
        ):
            raise ValueError(
                f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} must match prompt_embeds "
                f"{reference}"
            )

    def _check_conditions(
        self,
        task_layout: TaskLayout,
        conditions: ConditionFrames | None,
        num_frames: int | None,
        height: int | None,
        width: int | None,
    ) -> tuple[dict[str, torch.Tensor], int | None, int | None, int | None]:
        """Validate condition frames (names, channels, frame counts, sizes) and return them batched."""
        conditions = dict(conditions or {})
        needed = [layer.name for layer in task_layout.condition_layers]
        unknown = sorted(set(conditions) - set(needed))
        if unknown:
            raise ValueError(
                f"conditions given for {unknown}, but task {task_layout.task!r} conditions on {needed}"
            )
        missing = [name for name in needed if name not in conditions]
        if missing:
            raise ValueError(f"task {task_layout.task!r} needs condition frames for layer(s) {missing}")
        batched: dict[str, torch.Tensor] = {}
        for layer in task_layout.condition_layers:
            frames = conditions[layer.name]
            if not isinstance(frames, torch.Tensor) or frames.dim() not in (4, 5):
                raise ValueError(f"condition {layer.name!r} must be a [T, C, H, W] or [B, T, C, H, W] tensor")
            frames = frames if frames.dim() == 5 else frames.unsqueeze(0)
            channels = frames.shape[2]
            allowed = (4,) if layer.has_alpha else ((3, 4) if layer.role == "foreground" else (3,))
            if channels not in allowed:
                kind = "RGBA" if allowed == (4,) else "RGB"
                raise ValueError(
                    f"condition {layer.name!r} must be {kind} (C in {allowed}), got C={channels}"
                )
            t, h, w = frames.shape[1], frames.shape[3], frames.shape[4]
            for label, value, expected in (
                ("frames", t, num_frames),
                ("height", h, height),
                ("width", w, width),
            ):
                if expected is not None and value != expected:
                    raise ValueError(f"condition {layer.name!r} has {label}={value}, expected {expected}")
            num_frames, height, width = t, h, w
            batched[layer.name] = frames.float()
        return batched, num_frames, height, width

    @staticmethod
    def _batch_conditions(conditions: dict[str, torch.Tensor], batch_size: int) -> dict[str, torch.Tensor]:
        for name, frames in conditions.items():
            if frames.shape[0] not in (1, batch_size):
                raise ValueError(
                    f"condition {name!r} has batch {frames.shape[0]}, expected 1 or {batch_size}"
                )
        return {name: frames.expand(batch_size, *frames.shape[1:]) for name, frames in conditions.items()}

    # ------------------------------------------------------------------ text
    def encode_prompts(
        self,
        prompts: Sequence[str | None],
        *,
        max_sequence_length: int,
        device: torch.device,
        dtype: torch.dtype,
        unconditional: Literal["zeros", "empty_string"] = "zeros",
    ) -> torch.Tensor:
        """Layer prompts in prompt order (``None``: unconditional layer) -> ``[1, L * max_len, D]``."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline has no text encoder/tokenizer; pass prompt_embeds instead")
        encoder = LayerPromptEncoder(
            self.text_encoder, self.tokenizer, max_length=max_sequence_length, unconditional=unconditional
        )
        with torch.no_grad():
            return encoder(list(prompts), device=device, dtype=dtype).embeddings

    def prepare_text(
        self,
        plan: CallPlan,
        prompts: Mapping[str, str] | Sequence[str] | None,
        negative_prompts: Mapping[str, str] | Sequence[str] | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        num_videos_per_prompt: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conditional and (when guided) unconditional text, repeated per video: ``[B, L * S, D]``."""
        dtype = self.transformer.dtype
        length = self.geometry.text_tokens_per_prompt
        if prompt_embeds is None:
            texts = plan.task_layout.resolve_prompts(prompts)  # type: ignore[arg-type]  # checked
            prompt_embeds = self.encode_prompts(texts, max_sequence_length=length, device=device, dtype=dtype)
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
        if plan.guided and negative_prompt_embeds is None:
            if plan.settings["unconditional"] == "zeros":
                negative_prompt_embeds = torch.zeros_like(prompt_embeds)
            else:
                names = [layer.name for layer in plan.task_layout.prompt_layers]
                negative_prompt_embeds = self.encode_prompts(
                    _negative_texts(names, negative_prompts),
                    max_sequence_length=length,
                    device=device,
                    dtype=dtype,
                )
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        return prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0), negative_prompt_embeds

    # ------------------------------------------------------------------ latents
    def prepare_condition_latents(
        self, plan: CallPlan, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """Clean latents ``[B, F, C, h, w]`` of the full sequence (valid at ``plan.condition_frames``).

        ``per_clip``: each condition clip on its own; ``joint``: the whole video in one pass, the
        generated layers as mid-grey placeholders (see :mod:`layerflow.codec`). ``None`` without conditions.
        """
        if not plan.conditions:
            return None
        frames = {name: value.to(device) for name, value in plan.conditions.items()}
        posterior = self.codec.encode(frames, plan.frames, plan.task_layout.condition_clips)
        return posterior.sample(generator).to(dtype=dtype)

    def prepare_latents(
        self,
        plan: CallPlan,
        latents: torch.Tensor | None,
        generator: torch.Generator | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Initial sampler state: noise (or ``latents``) for the generated latent frames only."""
        frames = plan.frames
        shape = (
            plan.batch_size,
            len(plan.generated_frames),
            self.geometry.latent_channels,
            frames.latent_height,
            frames.latent_width,
        )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            latents = latents * self.scheduler.init_noise_sigma
        return latents.to(device=device, dtype=dtype)

    @staticmethod
    def assemble(state: torch.Tensor, condition: torch.Tensor | None, plan: CallPlan) -> torch.Tensor:
        """Generated latents (the sampler state) + clean condition latents -> the full sequence."""
        if condition is None:
            return state
        full = condition.to(state.dtype).clone()
        full[:, list(plan.generated_frames)] = state
        return full

    @staticmethod
    def _select(full: torch.Tensor, plan: CallPlan) -> torch.Tensor:
        """The generated latent frames of a full sequence (drops the condition outputs)."""
        if len(plan.generated_frames) == full.shape[1]:
            return full
        return full[:, list(plan.generated_frames)]

    # ------------------------------------------------------------------ sampling
    def _scheduler_step_kwargs(self, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        if "generator" in accepted:
            kwargs["generator"] = generator
        return kwargs

    def _velocity(
        self,
        plan: CallPlan,
        state: torch.Tensor,
        condition: torch.Tensor | None,
        text: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """Guided velocity of the generated latents at timestep ``t`` (conditions spliced in, CFG)."""
        full = self.assemble(self.scheduler.scale_model_input(state, t), condition, plan)
        guided = text.shape[0] != full.shape[0]
        model_input = torch.cat([full, full]) if guided else full
        velocity = self.transformer(
            model_input,
            text,
            t.expand(model_input.shape[0]),
            num_clips=len(plan.task_layout.clips),
            attention_kwargs=plan.attention_kwargs,
            return_dict=False,
        )[0].float()
        velocity = self._select(velocity, plan)
        if not guided:
            return velocity
        settings = plan.settings
        scale = float(settings["guidance_scale"])
        if settings["use_dynamic_cfg"]:
            scale = dynamic_guidance_scale(scale, float(t.item()), int(settings["num_inference_steps"]))
        uncond, cond = velocity.chunk(2)
        return uncond + scale * (cond - uncond)

    def denoise(
        self,
        plan: CallPlan,
        latents: torch.Tensor,
        condition: torch.Tensor | None,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        generator: torch.Generator | None,
        eta: float,
        callback_on_step_end: Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]] | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> torch.Tensor:
        """The sampling loop; the state holds only the generated latents, conditions are spliced in per call."""
        self.scheduler.set_timesteps(int(plan.settings["num_inference_steps"]), device=latents.device)
        timesteps = self.scheduler.timesteps
        text = (
            prompt_embeds
            if negative_prompt_embeds is None
            else torch.cat([negative_prompt_embeds, prompt_embeds])
        )
        step_kwargs = self._scheduler_step_kwargs(generator, eta)
        dtype = prompt_embeds.dtype
        old_pred_original_sample = None
        with self.progress_bar(total=len(timesteps)) as progress_bar, merged_for_inference(self.transformer):
            for i, t in enumerate(timesteps):
                velocity = self._velocity(plan, latents, condition, text, t)
                if isinstance(self.scheduler, CogVideoXDPMScheduler):
                    latents, old_pred_original_sample = self.scheduler.step(
                        velocity,
                        old_pred_original_sample,
                        t,
                        timesteps[i - 1] if i > 0 else None,
                        latents,
                        **step_kwargs,
                        return_dict=False,
                    )
                else:
                    latents = self.scheduler.step(velocity, t, latents, **step_kwargs, return_dict=False)[0]
                latents = latents.to(dtype)
                if callback_on_step_end is not None:
                    tensors = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                    }
                    returned = callback_on_step_end(
                        self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    )
                    latents = returned.pop("latents", latents)
                progress_bar.update()
        return latents

    def decode_layers(self, plan: CallPlan, full: torch.Tensor, output_type: OutputType) -> dict[str, Any]:
        """The full latent sequence -> per-layer frames (``"pt"`` / ``"np"``), nothing for ``"latent"``."""
        if output_type == "latent":
            return {}
        decoded = self.codec.decode(full, plan.frames)
        if output_type == "pt":
            return decoded
        return {k: v.permute(0, 1, 3, 4, 2).cpu().numpy() for k, v in decoded.items()}

    @torch.no_grad()
    def __call__(
        self,
        prompts: Mapping[str, str] | Sequence[str] | None = None,
        task: str = "generate",
        *,
        conditions: ConditionFrames | None = None,
        negative_prompts: Mapping[str, str] | Sequence[str] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        use_dynamic_cfg: bool | None = None,
        unconditional: Unconditional | None = None,
        isolate_conditions: bool = False,
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: OutputType = "pt",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        max_sequence_length: int | None = None,
    ) -> LayerFlowOutput | tuple[dict[str, Any], torch.Tensor]:
        """Run one LayerFlow task.

        Args:
            prompts: per-layer prompts, a mapping layer name -> text or a list in prompt order. Every
                layer takes one, except the composite in ``decompose``.
            task: ``"generate"``, ``"foreground_to_background"``, ``"background_to_foreground"`` or ``"decompose"``.
            conditions: layer name -> frames ``[T, C, H, W]`` (or batched) in [0, 1] for the task's
                condition layers; foregrounds straight-alpha RGBA.
            num_frames, height, width: pixel frames per clip and frame size; taken from the
                conditions when given, else 16 frames at the transformer's sample size.
            num_inference_steps, guidance_scale, use_dynamic_cfg, unconditional: sampling settings;
                ``None`` takes :meth:`sampling_defaults` (50 steps, CFG 6, all-zero unconditional
                text; dynamic CFG, the CogVideoX/SAT schedule, on for official variants only).
                ``unconditional="encoded"`` encodes ``negative_prompts`` (default empty) per layer.
            isolate_conditions: condition clips attend only to the text and to themselves (needs the
                layer-attention processor); default full joint attention, as the official model.
            output_type: ``"pt"`` tensors, ``"np"`` arrays, ``"latent"`` (no decoding).
            callback_on_step_end: ``fn(pipe, step, timestep, tensors) -> dict`` after every step;
                ``tensors`` holds ``callback_on_step_end_tensor_inputs`` (``latents`` = generated frames).
        """
        given = {
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "use_dynamic_cfg": use_dynamic_cfg,
            "unconditional": unconditional,
        }
        settings = {k: v if given.get(k) is None else given[k] for k, v in self.sampling_defaults().items()}
        # 1. Check inputs: everything is validated before any model runs.
        plan = self.check_inputs(
            task,
            prompts,
            negative_prompts,
            conditions,
            num_frames,
            height,
            width,
            prompt_embeds,
            negative_prompt_embeds,
            latents,
            settings,
            output_type=output_type,
            isolate_conditions=isolate_conditions,
            num_videos_per_prompt=num_videos_per_prompt,
            max_sequence_length=max_sequence_length or self.geometry.text_tokens_per_prompt,
            attention_kwargs=attention_kwargs,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        device = self._execution_device
        # 2. Layer prompts -> text embeddings (and the unconditional text when guided).
        prompt_embeds, negative_prompt_embeds = self.prepare_text(
            plan,
            prompts,
            negative_prompts,
            prompt_embeds,
            negative_prompt_embeds,
            num_videos_per_prompt,
            device,
        )
        # 3. Clean condition latents through the layout's clip codec.
        condition = self.prepare_condition_latents(plan, generator, device, prompt_embeds.dtype)
        # 4. Initial noise for the generated latent frames.
        latents = self.prepare_latents(plan, latents, generator, device, prompt_embeds.dtype)
        # 5. Denoising.
        latents = self.denoise(
            plan,
            latents,
            condition,
            prompt_embeds,
            negative_prompt_embeds,
            generator,
            eta,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        # 6. Conditions go back in untouched; the full sequence is decoded into layers.
        full = self.assemble(latents, condition, plan)
        layers = self.decode_layers(plan, full, output_type)
        self.maybe_free_model_hooks()
        # 7. Output.
        if not return_dict:
            return layers, full
        return self._output(plan, prompts, layers, full)

    @staticmethod
    def _output(
        plan: CallPlan,
        prompts: Mapping[str, str] | Sequence[str] | None,
        layers: dict[str, Any],
        full: torch.Tensor,
    ) -> LayerFlowOutput:
        task_layout = plan.task_layout
        texts = task_layout.resolve_prompts(prompts) if prompts is not None else []
        return LayerFlowOutput(
            layers=layers,
            latents=full,
            task=task_layout.task,
            roles={layer.name: layer.role for layer in task_layout.layers},
            prompts=dict(zip([layer.name for layer in task_layout.prompt_layers], texts, strict=False)),
            settings=dict(plan.settings),
        )


def _negative_texts(
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
