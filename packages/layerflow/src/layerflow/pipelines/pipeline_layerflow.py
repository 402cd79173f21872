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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_ddim_cogvideox import CogVideoXDDIMScheduler
from diffusers.schedulers.scheduling_dpm_cogvideox import CogVideoXDPMScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from layer_embeddings import LayerPromptEncoder
from layerflow.layout import LayerLayout, TaskLayout
from layerflow.media.output import DEFAULT_FORMATS, AlphaMode, OutputLayer, write_output_dir

from . import representation as rep

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
        latents: ``[B, F, C, h, w]``, every clip in layout order (condition clips included).
        task: the task that produced them.
        roles: layer name -> role (``"foreground"``, ``"background"``, ``"composite"``).
        prompts: layer name -> the prompt it was generated with (prompted layers only).
    """

    layers: dict[str, Any]
    latents: torch.Tensor
    task: str
    roles: dict[str, str]
    prompts: dict[str, str]

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


@dataclass(frozen=True)
class _Geometry:
    """Frame/size facts checked once, before any compute."""

    num_frames: int
    height: int
    width: int
    latent_frames: int
    latent_height: int
    latent_width: int


def check_geometry(
    num_frames: int, height: int, width: int, *, spatial: int, temporal: int, patch: int
) -> _Geometry:
    """Check frames per clip and frame size against the VAE's compression factors and the patch size.

    The causal 3D VAE maps ``n`` frames to ``ceil(n / temporal)`` latents and decodes ``k`` latents to
    ``temporal * k`` frames (``k`` even) or ``temporal * (k - 1) + 1`` (``k`` odd), so a clip survives
    the round trip only with ``n % (2 * temporal)`` in ``{0, 1}`` (official clips: 16 frames).
    """
    if num_frames < 1 or num_frames % (2 * temporal) not in (0, 1):
        good = [n for n in range(1, 6 * temporal) if n % (2 * temporal) in (0, 1)]
        raise ValueError(
            f"num_frames={num_frames} per clip does not survive the VAE's temporal compression x{temporal}: "
            f"use a multiple of {2 * temporal} or a multiple plus one (e.g. {good}; official clips are 16)"
        )
    multiple = spatial * patch
    for name, size in (("height", height), ("width", width)):
        if size < multiple or size % multiple:
            raise ValueError(
                f"{name}={size} must be a positive multiple of {multiple} "
                f"(VAE spatial factor {spatial} x transformer patch size {patch})"
            )
    latent_frames = (num_frames + temporal - 1) // temporal
    return _Geometry(num_frames, height, width, latent_frames, height // spatial, width // spatial)


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
            defaults to the official foreground/background/composite with an alpha clip.
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
        self.vae_scale_factor_spatial = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.vae_scale_factor_temporal = int(self.vae.config.temporal_compression_ratio)
        self.vae_scaling_factor = float(self.vae.config.scaling_factor)

    # ------------------------------------------------------------------ memory helpers (real GPUs)
    def enable_vae_slicing(self) -> None:
        self.vae.enable_slicing()

    def enable_vae_tiling(self) -> None:
        self.vae.enable_tiling()

    # ------------------------------------------------------------------ validation
    def _check_geometry(self, num_frames: int, height: int, width: int) -> _Geometry:
        geometry = check_geometry(
            num_frames,
            height,
            width,
            spatial=self.vae_scale_factor_spatial,
            temporal=self.vae_scale_factor_temporal,
            patch=int(self.transformer.config.patch_size),
        )
        if self.layer_layout.alpha == "latent_offset" and self.transparent_vae is not None:
            offset_frames = self.transparent_vae.num_latent_frames(num_frames)
            if offset_frames != geometry.latent_frames:
                raise ValueError(
                    f"num_frames={num_frames}: the transparent VAE's offset encoder makes {offset_frames} latent "
                    f"frames, the VAE {geometry.latent_frames}"
                )
        return geometry

    def _check_components(self, task_layout: TaskLayout, decoding: bool) -> None:
        config = self.transformer.config
        if self.vae.config.latent_channels != config.in_channels:
            raise ValueError(
                f"the VAE makes {self.vae.config.latent_channels}-channel latents, the transformer takes "
                f"{config.in_channels}"
            )
        if task_layout.num_prompts > config.num_layer_prompts:
            raise ValueError(
                f"task {task_layout.task!r} uses {task_layout.num_prompts} layer prompts, the transformer has "
                f"{config.num_layer_prompts} prompt slots"
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

    # ------------------------------------------------------------------ text
    def _prompt_encoder(
        self, max_sequence_length: int, unconditional: Literal["zeros", "empty_string"]
    ) -> LayerPromptEncoder:
        return LayerPromptEncoder(
            self.text_encoder, self.tokenizer, max_length=max_sequence_length, unconditional=unconditional
        )

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
        encoder = self._prompt_encoder(max_sequence_length, unconditional)
        with torch.no_grad():
            return encoder(list(prompts), device=device, dtype=dtype).embeddings

    # ------------------------------------------------------------------ latents
    def _vae_encode(self, frames: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Model-range clip ``[B, T, 3, H, W]`` -> scaled posterior sample ``[B, t, C, h, w]`` (official)."""
        video = frames.permute(0, 2, 1, 3, 4).to(device=self.vae.device, dtype=self.vae.dtype)
        posterior: DiagonalGaussianDistribution = self.vae.encode(video).latent_dist
        return (posterior.sample(generator) * self.vae_scaling_factor).permute(0, 2, 1, 3, 4)

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, t, C, h, w]`` -> frames ``[B, T, 3, H, W]`` in [0, 1]."""
        video = latents.permute(0, 2, 1, 3, 4).to(dtype=self.vae.dtype) / self.vae_scaling_factor
        decoded = self.vae.decode(video).sample
        return rep.from_model_range(decoded.permute(0, 2, 1, 3, 4).float())

    def encode_condition_clips(
        self,
        task_layout: TaskLayout,
        conditions: Mapping[str, torch.Tensor],
        generator: torch.Generator | None,
    ) -> dict[int, torch.Tensor]:
        """Condition frames (by layer) -> clean latents per clip index."""
        latents: dict[int, torch.Tensor] = {}
        alpha = self.layer_layout.alpha
        for layer in task_layout.condition_layers:
            frames = conditions[layer.name]
            if layer.has_alpha and alpha == "latent_offset":
                (index,) = layer.clip_indices
                latents[index] = self.transparent_vae.encode_rgba(self.vae, frames)
                continue
            color = frames[:, :, :3]
            if layer.role == "foreground" and frames.shape[2] == 4:
                color = rep.premultiply_onto_grey(color, frames[:, :, 3:])
            for index in layer.clip_indices:
                content = task_layout.clips[index].content
                clip = color if content == "color" else rep.alpha_to_clip(frames[:, :, 3:])
                latents[index] = self._vae_encode(rep.to_model_range(clip), generator)
        return latents

    def decode_layers(self, task_layout: TaskLayout, clips: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Latent clips in layout order -> per-layer frames (foregrounds straight-alpha RGBA)."""
        layers: dict[str, torch.Tensor] = {}
        alpha = self.layer_layout.alpha
        for layer in task_layout.layers:
            by_content = {task_layout.clips[i].content: clips[i] for i in layer.clip_indices}
            if layer.has_alpha and alpha == "latent_offset":
                rgba = self.transparent_vae.decode_rgba(self.vae, by_content["color"])
                layers[layer.name] = rgba.float().clamp(0, 1)
                continue
            color = self._vae_decode(by_content["color"])
            if layer.has_alpha:
                matte = rep.alpha_from_clip(self._vae_decode(by_content["alpha"]))
                color = torch.cat([rep.unpremultiply_from_grey(color, matte), matte], dim=2)
            layers[layer.name] = color
        return layers

    # ------------------------------------------------------------------ sampling
    def _prepare_embeddings(
        self,
        task_layout: TaskLayout,
        prompts: Mapping[str, str] | Sequence[str] | None,
        negative_prompts: Mapping[str, str] | Sequence[str] | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        unconditional: Unconditional,
        guided: bool,
        max_sequence_length: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        dtype = self.transformer.dtype
        expected_length = task_layout.num_prompts * max_sequence_length
        if prompt_embeds is None:
            if prompts is None:
                raise ValueError("pass per-layer prompts (or prompt_embeds)")
            texts = task_layout.resolve_prompts(prompts)
            prompt_embeds = self.encode_prompts(
                texts, max_sequence_length=max_sequence_length, device=device, dtype=dtype
            )
        if prompt_embeds.dim() != 3 or prompt_embeds.shape[1] != expected_length:
            raise ValueError(
                f"prompt_embeds must be [B, {expected_length}, D] ({task_layout.num_prompts} prompts x "
                f"{max_sequence_length} tokens), got {tuple(prompt_embeds.shape)}"
            )
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
        if not guided:
            if negative_prompts is not None or negative_prompt_embeds is not None:
                raise ValueError("negative prompts act through guidance: they need guidance_scale > 1")
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            if unconditional == "zeros":
                if negative_prompts is not None:
                    raise ValueError(
                        "negative prompts need unconditional='encoded' (official CFG uses zeros)"
                    )
                negative_prompt_embeds = torch.zeros_like(prompt_embeds)
            else:
                names = [layer.name for layer in task_layout.prompt_layers]
                negative_prompt_embeds = self.encode_prompts(
                    _negative_texts(names, negative_prompts),
                    max_sequence_length=max_sequence_length,
                    device=device,
                    dtype=dtype,
                )
        if negative_prompt_embeds.shape != prompt_embeds.shape:
            raise ValueError(
                f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} != prompt_embeds "
                f"{tuple(prompt_embeds.shape)}"
            )
        return prompt_embeds, negative_prompt_embeds.to(device=device, dtype=dtype)

    def _scheduler_step_kwargs(self, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        if "generator" in accepted:
            kwargs["generator"] = generator
        return kwargs

    def attention_kwargs_for(
        self,
        task_layout: TaskLayout,
        max_sequence_length: int,
        latent_frames: int,
        latent_hw: tuple[int, int],
        isolate_conditions: bool = False,
    ) -> dict[str, Any]:
        """Attention kwargs for the installed processor: the segment layout when it is layer-aware."""
        from layerflow.models.attention import segment_attention_kwargs

        patch = int(self.transformer.config.patch_size)
        tokens_per_clip = latent_frames * (latent_hw[0] // patch) * (latent_hw[1] // patch)
        lengths = task_layout.segment_lengths(max_sequence_length, tokens_per_clip)
        return segment_attention_kwargs(
            self.transformer, lengths, task_layout.attention_table(isolate_conditions)
        )

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
        num_inference_steps: int = 50,
        guidance_scale: float = 6.0,
        use_dynamic_cfg: bool = False,
        unconditional: Unconditional = "zeros",
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
            guidance_scale, use_dynamic_cfg: CFG scale; constant, or the CogVideoX/SAT dynamic schedule.
            unconditional: ``"zeros"``: all-zero unconditional text (official); ``"encoded"``: encode
                ``negative_prompts`` (default empty) per layer.
            isolate_conditions: condition clips attend only to the text and to themselves (needs the
                layer-attention processor); default full joint attention, as the official model.
            output_type: ``"pt"`` tensors, ``"np"`` arrays, ``"latent"`` (no decoding).
            callback_on_step_end: ``fn(pipe, step, timestep, tensors) -> dict`` after every step;
                ``tensors`` holds ``callback_on_step_end_tensor_inputs`` (``latents`` = generated clips).
        """
        # 1. Everything is validated before any model runs.
        task_layout = self.layer_layout.for_task(task)
        if output_type not in ("pt", "np", "latent"):
            raise ValueError(f"output_type must be 'pt', 'np' or 'latent', got {output_type!r}")
        self._check_components(task_layout, decoding=output_type != "latent")
        if unconditional not in ("zeros", "encoded"):
            raise ValueError(f"unconditional must be 'zeros' or 'encoded', got {unconditional!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
        bad_inputs = sorted(set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs))
        if bad_inputs:
            raise ValueError(f"callback tensor inputs {bad_inputs} are not in {self._callback_tensor_inputs}")
        condition_frames, num_frames, height, width = self._check_conditions(
            task_layout, conditions, num_frames, height, width
        )
        config = self.transformer.config
        geometry = self._check_geometry(
            16 if num_frames is None else num_frames,
            height or config.sample_height * self.vae_scale_factor_spatial,
            width or config.sample_width * self.vae_scale_factor_spatial,
        )
        max_sequence_length = max_sequence_length or int(config.max_text_seq_length)
        if max_sequence_length != config.max_text_seq_length:
            raise ValueError(
                f"max_sequence_length={max_sequence_length}, but the transformer takes "
                f"{config.max_text_seq_length}-token layer prompts"
            )
        device = self._execution_device
        guided = guidance_scale > 1.0
        prompt_embeds, negative_prompt_embeds = self._prepare_embeddings(
            task_layout,
            prompts,
            negative_prompts,
            prompt_embeds,
            negative_prompt_embeds,
            unconditional,
            guided,
            max_sequence_length,
            device,
        )
        batch_size = prompt_embeds.shape[0] * num_videos_per_prompt
        for name, frames in condition_frames.items():
            if frames.shape[0] not in (1, batch_size):
                raise ValueError(
                    f"condition {name!r} has batch {frames.shape[0]}, expected 1 or {batch_size}"
                )
            condition_frames[name] = frames.expand(batch_size, *frames.shape[1:]).to(device)
        prompt_embeds = prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)

        # 2. Clean condition latents (one per condition clip) and the initial noise for the rest.
        clip_shape = (
            geometry.latent_frames,
            config.in_channels,
            geometry.latent_height,
            geometry.latent_width,
        )
        condition = {
            index: clip.to(dtype=prompt_embeds.dtype)
            for index, clip in self.encode_condition_clips(task_layout, condition_frames, generator).items()
        }
        for index, clip in condition.items():
            if tuple(clip.shape[1:]) != clip_shape:
                raise ValueError(
                    f"condition clip {index} encoded to {tuple(clip.shape)}, expected [B, *{clip_shape}]"
                )
        generated = task_layout.generated_clips
        state_shape = (batch_size, len(generated) * geometry.latent_frames, *clip_shape[1:])
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if latents is None:
            latents = randn_tensor(state_shape, generator=generator, device=device, dtype=prompt_embeds.dtype)
            latents = latents * self.scheduler.init_noise_sigma
        elif tuple(latents.shape) != state_shape:
            raise ValueError(
                f"latents must have shape {state_shape} (generated clips only), got {tuple(latents.shape)}"
            )
        latents = latents.to(device=device, dtype=prompt_embeds.dtype)

        text = (
            prompt_embeds
            if negative_prompt_embeds is None
            else torch.cat([negative_prompt_embeds, prompt_embeds])
        )
        attention_kwargs = {
            **self.attention_kwargs_for(
                task_layout,
                max_sequence_length,
                geometry.latent_frames,
                (geometry.latent_height, geometry.latent_width),
                isolate_conditions,
            ),
            **(attention_kwargs or {}),
        }
        step_kwargs = self._scheduler_step_kwargs(generator, eta)
        num_clips = len(task_layout.clips)

        # 3. Denoising: the state holds only the generated clips; conditions are spliced in per call.
        old_pred_original_sample = None
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                model_state = self.scheduler.scale_model_input(latents, t)
                full = self._assemble(model_state, condition, generated, num_clips, geometry.latent_frames)
                model_input = full if negative_prompt_embeds is None else torch.cat([full, full])
                velocity = self.transformer(
                    model_input,
                    text,
                    t.expand(model_input.shape[0]),
                    num_clips=num_clips,
                    attention_kwargs=attention_kwargs,
                    return_dict=False,
                )[0].float()
                velocity = self._select(velocity, generated, geometry.latent_frames)
                if negative_prompt_embeds is not None:
                    scale = (
                        dynamic_guidance_scale(guidance_scale, float(t.item()), num_inference_steps)
                        if use_dynamic_cfg
                        else guidance_scale
                    )
                    uncond, cond = velocity.chunk(2)
                    velocity = uncond + scale * (cond - uncond)
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
                latents = latents.to(prompt_embeds.dtype)
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

        # 4. Conditions go back in untouched; decode every clip.
        full = self._assemble(latents, condition, generated, num_clips, geometry.latent_frames)
        layers: dict[str, Any] = {}
        if output_type != "latent":
            clips = list(full.split(geometry.latent_frames, dim=1))
            decoded = self.decode_layers(task_layout, clips)
            layers = (
                decoded
                if output_type == "pt"
                else {k: v.permute(0, 1, 3, 4, 2).cpu().numpy() for k, v in decoded.items()}
            )
        self.maybe_free_model_hooks()
        if not return_dict:
            return layers, full
        texts = task_layout.resolve_prompts(prompts) if prompts is not None else []
        return LayerFlowOutput(
            layers=layers,
            latents=full,
            task=task,
            roles={layer.name: layer.role for layer in task_layout.layers},
            prompts=dict(zip([layer.name for layer in task_layout.prompt_layers], texts, strict=False)),
        )

    @staticmethod
    def _assemble(
        state: torch.Tensor,
        condition: Mapping[int, torch.Tensor],
        generated: Sequence[int],
        num_clips: int,
        clip_frames: int,
    ) -> torch.Tensor:
        """Generated clips (the sampler state) + clean condition clips -> the full clip sequence."""
        if not condition:
            return state
        pieces = dict(zip(generated, state.split(clip_frames, dim=1), strict=True))
        pieces.update(condition)
        return torch.cat([pieces[i].to(state.dtype) for i in range(num_clips)], dim=1)

    @staticmethod
    def _select(full: torch.Tensor, generated: Sequence[int], clip_frames: int) -> torch.Tensor:
        """The generated clips of a full clip sequence (drops the condition outputs)."""
        clips = full.split(clip_frames, dim=1)
        if len(generated) == len(clips):
            return full
        return torch.cat([clips[i] for i in generated], dim=1)


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
