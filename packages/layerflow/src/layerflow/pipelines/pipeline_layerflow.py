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
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_ddim_cogvideox import CogVideoXDDIMScheduler
from diffusers.schedulers.scheduling_dpm_cogvideox import CogVideoXDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from layer_embeddings import LayerPromptEncoder
from layerflow.atomic import apply_umask, apply_umask_tree
from layerflow.codec import ClipCodec
from layerflow.conditions import FirstFrameMode
from layerflow.geometry import ModelGeometry
from layerflow.layout import LayerLayout
from layerflow.models.adapters import merged_for_inference
from layerflow.models.configs import model_geometry
from layerflow.presets import Preset
from layerflow.variants import OFFICIAL_SAMPLING

from .acceleration import place, preset_cache, unindex_cpu_offload_hooks
from .call_checks import ConditionFrames, check_call, negative_texts
from .call_plan import CallPlan, plan_call
from .output import LayerFlowOutput

OutputType = Literal["pt", "np", "latent"]
Unconditional = Literal["zeros", "encoded"]


#: Sampling settings of the project's own layouts: the official sampler's, but a constant guidance
#: scale instead of the SAT dynamic-CFG quirk, guided on every step. Official variants use
#: :data:`OFFICIAL_SAMPLING`. Every one is a ``__call__`` argument.
SAMPLING_DEFAULTS: Mapping[str, Any] = {
    **OFFICIAL_SAMPLING,
    "use_dynamic_cfg": False,
    "guidance_interval": (0.0, 1.0),
}


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
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "condition_latents"]
    # diffusers' denoising-loop state, read by its cache hooks (``current_timestep_callback``) and callbacks.
    _current_timestep: torch.Tensor | None = None
    _interrupt: bool = False
    _attention_kwargs: dict[str, Any] | None = None
    #: What :meth:`enable_preset` last set (recorded in every output's settings).
    preset: Preset = Preset()

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

    def sampling_settings(self, **given: Any) -> dict[str, Any]:
        """The call's sampling settings: ``given`` where not ``None``, else :meth:`sampling_defaults`."""
        return {k: v if given.get(k) is None else given[k] for k, v in self.sampling_defaults().items()}

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``, with file modes that follow the umask (its safetensors are ``0600``)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        written = [Path(save_directory) / name for name in (*self.components, "model_index.json")]
        for path in written:  # only what it wrote: other files in the folder keep their modes
            if path.is_dir():
                apply_umask_tree(path)
            elif path.is_file():
                apply_umask(path)

    # ------------------------------------------------------------------ diffusers' loop state
    @property
    def current_timestep(self) -> torch.Tensor | None:
        """The timestep of the transformer call in progress (``None`` outside the loop): what
        PyramidAttentionBroadcast and FasterCache read through ``current_timestep_callback``."""
        return self._current_timestep

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (e.g. in a step callback) to skip the remaining steps."""
        return self._interrupt

    @property
    def attention_kwargs(self) -> dict[str, Any] | None:
        """What the transformer gets on every call of the running ``__call__`` (segment layout included)."""
        return self._attention_kwargs

    # ------------------------------------------------------------------ speed and memory
    def enable_preset(self, preset: Preset, device: str | torch.device | None = None) -> None:
        """Switch to ``preset``: its cache method on the transformer (any earlier one removed) and
        its memory mode for ``device`` (default: the execution device).

        Model CPU offload is undone when the memory mode changes; group offload (``"low"``) cannot be.
        """
        if self.preset.memory == "low" and preset.memory != "low":
            raise ValueError("memory 'low' (group offload) cannot be switched off: load the pipeline again")
        device = device if device is not None else self._execution_device
        # Offload hooks first: accelerate restores the forward it wrapped, which would drop a cache
        # hook enabled after it (FasterCache's, on the transformer itself, was lost that way).
        if self.preset.memory == "offload":
            self.remove_all_hooks()
        if self.transformer.is_cache_enabled:
            self.transformer.disable_cache()
        config = preset_cache(self, preset)
        if config is not None:
            self.transformer.enable_cache(config)
        if self.preset.memory != "low":
            place(self, preset, device)
        self.preset = preset

    def enable_vae_slicing(self) -> None:
        self.vae.enable_slicing()

    def enable_sequential_cpu_offload(
        self, gpu_id: int | None = None, device: torch.device | str | None = None
    ) -> None:
        """diffusers' sequential CPU offload; with ``device="cpu"`` it runs (exactly, saving nothing)
        instead of failing in accelerate (:func:`.acceleration.unindex_cpu_offload_hooks` says why)."""
        super().enable_sequential_cpu_offload(gpu_id=gpu_id, device=device)  # type: ignore[arg-type]  # None is its default
        unindex_cpu_offload_hooks(self)

    def enable_vae_tiling(self, **tiles: Any) -> None:
        """Spatial VAE tiles (``tiles``: ``AutoencoderKLCogVideoX.enable_tiling``'s sizes), for every
        layout: a joint pass runs each tile over the whole video (see :mod:`layerflow.codec`)."""
        self.vae.enable_tiling(**tiles)

    # ------------------------------------------------------------------ validation
    #: Validate a call's arguments before any model runs (:func:`.call_checks.check_call`).
    check_inputs = check_call

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
                    negative_texts(names, negative_prompts),
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
        task_layout = plan.task_layout
        posterior = self.codec.encode(frames, plan.frames, task_layout.given_clips, task_layout.first_frames)
        return posterior.sample(generator).to(dtype=dtype)

    def prepare_first_frame_noise(
        self, plan: CallPlan, condition: torch.Tensor | None, generator: torch.Generator | None
    ) -> torch.Tensor | None:
        """The noise the training-free mode re-noises first-frame latents with (one draw, so they
        follow the forward process from their clean value); ``None`` in every other call."""
        if plan.first_frame_mode != "training_free" or condition is None:
            return None
        shape = (condition.shape[0], len(plan.first_frame_latents), *condition.shape[2:])
        return randn_tensor(shape, generator=generator, device=condition.device, dtype=condition.dtype)

    def condition_at(
        self, plan: CallPlan, condition: torch.Tensor | None, noise: torch.Tensor | None, t: torch.Tensor
    ) -> torch.Tensor | None:
        """The condition latents spliced into the transformer call at timestep ``t``: clean, except
        the first frames in the training-free mode, re-noised to ``t`` (the noise level of the
        latents around them, as a model never trained on clean first frames expects)."""
        if noise is None or condition is None:
            return condition
        frames = list(plan.first_frame_latents)
        spliced = condition.clone()
        spliced[:, frames] = self.scheduler.add_noise(condition[:, frames], noise, t).to(condition.dtype)
        return spliced

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
        guided = text.shape[0] != full.shape[0]  # the caller passes the conditional text alone when not
        model_input = torch.cat([full, full]) if guided else full
        # One batched call, unconditional half first (FasterCache's order); keyword inputs, so cache
        # hooks can split them; the context keys the cache hooks' state, as in diffusers' pipelines.
        with self.transformer.cache_context("cond_uncond"):
            velocity = self.transformer(
                hidden_states=model_input,
                encoder_hidden_states=text,
                timestep=t.expand(model_input.shape[0]),
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
        first_frame_noise = self.prepare_first_frame_noise(plan, condition, generator)
        old_pred_original_sample = None
        with self.progress_bar(total=len(timesteps)) as progress_bar, merged_for_inference(self.transformer):
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                spliced = self.condition_at(plan, condition, first_frame_noise, t)
                step_text = text if plan.guided_at(i, len(timesteps)) else prompt_embeds
                velocity = self._velocity(plan, latents, spliced, step_text, t)
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
                        "condition_latents": condition,
                    }
                    returned = callback_on_step_end(
                        self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    )
                    latents = returned.pop("latents", latents)
                progress_bar.update()
        self._current_timestep = None
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
        guidance_interval: tuple[float, float] | None = None,
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
        first_frame_mode: FirstFrameMode | None = None,
    ) -> LayerFlowOutput | tuple[dict[str, Any], torch.Tensor]:
        """Run one LayerFlow task.

        Args:
            prompts: per-layer prompts, a mapping layer name -> text or a list in prompt order. Every
                layer takes one, except the composite in ``decompose``.
            task: ``"generate"``, ``"foreground_to_background"``, ``"background_to_foreground"``,
                ``"decompose"`` or ``"animate"`` (every layer generated, some from a given first frame).
            conditions: layer name -> frames ``[T, C, H, W]`` (or batched) in [0, 1] for the task's
                condition layers; foregrounds straight-alpha RGBA. ``animate`` takes
                :func:`~layerflow.conditions.first_frame_only` images instead: each becomes the clean
                latent of its clip's first latent frame.
            first_frame_mode: ``"trained"`` (first-frame latents spliced clean, as whole clips) or
                ``"training_free"`` (re-noised to every step's timestep, for models not trained for
                the task); default by the layout's ``tasks``.
            num_frames, height, width: pixel frames per clip and frame size; taken from the
                conditions when given, else 16 frames at the transformer's sample size.
            num_inference_steps, guidance_scale, use_dynamic_cfg, unconditional: sampling settings;
                ``None`` takes :meth:`sampling_defaults` (50 steps, CFG 6, all-zero unconditional
                text; dynamic CFG, the CogVideoX/SAT schedule, on for official variants only).
                ``unconditional="encoded"`` encodes ``negative_prompts`` (default empty) per layer.
            guidance_interval: ``(start, stop)``, fractions of the steps: CFG runs on steps ``i``
                with ``int(start * N) <= i < int(stop * N)`` (diffusers' guider ``start``/``stop``),
                the other steps run the conditional half alone (one transformer batch, not two).
                Default ``(0, 1)``: every step. Guidance only while the noise is high fixes the
                layout of the scene from the text and leaves the layers' agreement to the model
                (measured on the demo: see ``DemoSettings.guidance_interval``).
            isolate_conditions: condition clips attend only to the text and to themselves (needs the
                layer-attention processor); default full joint attention, as the official model.
            output_type: ``"pt"`` tensors, ``"np"`` arrays, ``"latent"`` (no decoding).
            callback_on_step_end: ``fn(pipe, step, timestep, tensors) -> dict`` after every step;
                ``tensors`` holds ``callback_on_step_end_tensor_inputs`` (``latents`` = generated frames,
                ``condition_latents`` = the clean condition latents spliced into every call, ``None``
                without conditions).
        """
        settings = self.sampling_settings(
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            use_dynamic_cfg=use_dynamic_cfg,
            guidance_interval=guidance_interval,
            unconditional=unconditional,
        )
        self._current_timestep = None
        self._interrupt = False
        # 1. Check inputs: everything is validated before any model runs; then the call's plan.
        self.check_inputs(
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
            num_videos_per_prompt=num_videos_per_prompt,
            max_sequence_length=max_sequence_length or self.geometry.text_tokens_per_prompt,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            first_frame_mode=first_frame_mode,
        )
        plan = plan_call(
            self,
            task,
            conditions,
            num_frames,
            height,
            width,
            prompt_embeds,
            settings,
            isolate_conditions=isolate_conditions,
            num_videos_per_prompt=num_videos_per_prompt,
            attention_kwargs=attention_kwargs,
            first_frame_mode=first_frame_mode,
        )
        self._attention_kwargs = plan.attention_kwargs
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
        return self._output(plan, prompts, layers, full, self.preset)

    @staticmethod
    def _output(
        plan: CallPlan,
        prompts: Mapping[str, str] | Sequence[str] | None,
        layers: dict[str, Any],
        full: torch.Tensor,
        preset: Preset,
    ) -> LayerFlowOutput:
        task_layout = plan.task_layout
        texts = task_layout.resolve_prompts(prompts) if prompts is not None else []
        first_frames = {"first_frame_mode": plan.first_frame_mode} if plan.first_frame_mode else {}
        return LayerFlowOutput(
            layers=layers,
            latents=full,
            task=task_layout.task,
            roles={layer.name: layer.role for layer in task_layout.layers},
            prompts=dict(zip([layer.name for layer in task_layout.prompt_layers], texts, strict=False)),
            settings={**plan.settings, **preset.to_dict(), **first_frames},
        )
