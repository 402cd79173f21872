"""diffusers' cache methods and memory modes on a :class:`LayerFlowPipeline`, and the presets over them.

Every cache method is diffusers' own hook (``transformer.enable_cache``); this module only fills in
what a LayerFlow transformer needs: the pipeline's timestep for the timestep-gated methods, the
frames-first tensor layout for FasterCache, CogVideoX's attention and feed-forward names for
TaylorSeer and the calibrated magnitude ratios for MagCache. The pipeline splices the clean
conditions into every transformer call and drops the condition outputs, so whatever a cache reuses
only changes the generated latents.

:class:`~layerflow.presets.Preset` is the one user-facing option (pipeline, ``TaskOptions``, CLI
``--speed``/``--memory``); :func:`preset_cache` and :func:`place` carry it out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast, get_args

import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)

from layerflow.presets import Preset, Speed


class AcceleratedPipeline(Protocol):
    """What the caches and memory modes use of a pipeline (``LayerFlowPipeline`` has it): a protocol,
    so that this module never imports the pipeline module that imports it."""

    transformer: Any

    @property
    def components(self) -> dict[str, Any]: ...

    @property
    def current_timestep(self) -> torch.Tensor | None: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def to(self, *args: Any, **kwargs: Any) -> Any: ...
    def enable_group_offload(self, *args: Any, **kwargs: Any) -> None: ...
    def enable_model_cpu_offload(self, *args: Any, **kwargs: Any) -> None: ...
    def enable_vae_slicing(self) -> None: ...
    def enable_vae_tiling(self, **tiles: Any) -> None: ...


CacheMethod = Literal["first_block", "pyramid_broadcast", "faster", "taylorseer", "mag"]
CACHE_METHODS: tuple[CacheMethod, ...] = get_args(CacheMethod)

#: The cache method and its settings behind each speed preset (``exact``: none): the two methods
#: measured on CogVideoX in diffusers (huggingface/diffusers#10163: 245.9 s -> 184.0 s with
#: PyramidAttentionBroadcast, 159.0 s with FasterCache, whose peak memory grows by about 2/3),
#: with the settings of diffusers' CogVideoX examples. Kept after measuring them on the trained demo
#: base (``benchmarks/bench_caches.py``, 20 steps, all four tasks): decoded layers 29.4 dB (fast)
#: and 25.0 dB (fastest) PSNR from exact at 0.82 and 0.62 of the block work, no demo metric worse
#: beyond sample noise; the other methods at their tiny-model settings save more work for far less
#: quality (FirstBlockCache 18.6 dB at 0.44, TaylorSeer 20.1 dB at 0.55) or save little (MagCache
#: 31.0 dB at 0.93).
SPEED_METHODS: dict[Speed, tuple[CacheMethod, dict[str, Any]] | None] = {
    "exact": None,
    "fast": ("pyramid_broadcast", {"spatial_attention_block_skip_range": 2}),
    "fastest": (
        "faster",
        {"attention_weight_callback": lambda _: 0.3, "unconditional_batch_timestep_skip_range": (-1, 781)},
    ),
}
#: CogVideoX block sub-modules a TaylorSeer prediction replaces (its defaults name no CogVideoX module).
TAYLORSEER_MODULES = [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"]


def cache_config(pipe: AcceleratedPipeline, method: CacheMethod, **settings: Any) -> Any:
    """diffusers' config of ``method`` for ``pipe``'s transformer; ``settings`` override its fields.

    MagCache needs ``mag_ratios`` (:func:`calibrate_mag_ratios`) and the call's ``num_inference_steps``.
    """
    # read at every hooked call; diffusers types it as an int, its own pipelines pass the tensor
    timestep = cast(Callable[[], int], lambda: pipe.current_timestep)
    if method == "first_block":
        return FirstBlockCacheConfig(**settings)
    if method == "pyramid_broadcast":
        return PyramidAttentionBroadcastConfig(
            **{"spatial_attention_timestep_skip_range": (100, 800), **settings},
            current_timestep_callback=timestep,
        )
    if method == "faster":
        return FasterCacheConfig(
            **{"attention_weight_callback": lambda _: 0.5, **settings},
            tensor_format="BFCHW",
            current_timestep_callback=timestep,
        )
    if method == "taylorseer":
        defaults = {"cache_identifiers": TAYLORSEER_MODULES, "taylor_factors_dtype": torch.float32}
        return TaylorSeerCacheConfig(**{**defaults, **settings})
    if method == "mag":
        return MagCacheConfig(**settings)
    raise ValueError(f"cache method must be one of {CACHE_METHODS}, got {method!r}")


def calibrate_mag_ratios(pipe: AcceleratedPipeline, *args: Any, **call: Any) -> list[float]:
    """MagCache's ``mag_ratios`` for ``pipe`` from one uncached call ``pipe(*args, **call)``.

    Per step: the mean over tokens of ``|residual_t| / |residual_{t-1}|`` of the whole block stack
    (last block's output minus first block's input), 1 at the first step: diffusers' calibration
    formula, returned instead of printed.
    """
    blocks = pipe.transformer.transformer_blocks
    inputs: list[torch.Tensor] = []
    ratios: list[float] = []
    previous: list[torch.Tensor] = []

    def head(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        inputs.append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

    def tail(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        residual = (output[0] - inputs.pop()).float()
        if previous:
            norms = torch.linalg.norm(residual, dim=-1) / (torch.linalg.norm(previous[0], dim=-1) + 1e-8)
            ratios.append(norms.mean().item())
        else:
            ratios.append(1.0)
        previous[:] = [residual]

    handles = [
        blocks[0].register_forward_pre_hook(head, with_kwargs=True),
        blocks[-1].register_forward_hook(tail, with_kwargs=True),
    ]
    try:
        pipe(*args, **call)
    finally:
        for handle in handles:
            handle.remove()
    return ratios


@dataclass
class BlockCalls:
    """Work the transformer blocks did: batch rows through every attention and feed-forward."""

    run: int = 0


@contextlib.contextmanager
def count_block_calls(transformer: torch.nn.Module) -> Iterator[BlockCalls]:
    """Count the rows each block's attention and feed-forward actually computed inside the context.

    The hooks sit on their first projections (``attn1.to_q``, ``ff.net.0``), below every diffusers
    hook: a block a cache skips, an attention it reuses or a CFG half it drops is not counted.
    """
    calls = BlockCalls()

    def count(_: torch.nn.Module, args: tuple[Any, ...]) -> None:
        calls.run += int(args[0].shape[0])

    handles = [
        block.get_submodule(name).register_forward_pre_hook(count)
        for block in cast(torch.nn.ModuleList, transformer.transformer_blocks)
        for name in ("attn1.to_q", "ff.net.0")
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def preset_cache(pipe: AcceleratedPipeline, preset: Preset) -> Any:
    """The cache config of ``preset.speed`` for ``pipe`` (``None``: exact)."""
    chosen = SPEED_METHODS[preset.speed]
    if chosen is None:
        return None
    method, settings = chosen
    return cache_config(pipe, method, **settings)


def unindex_cpu_offload_hooks(pipe: AcceleratedPipeline) -> int:
    """Make sequential CPU offload's hooks run on ``cpu`` instead of diffusers' ``cpu:0``; returns how many.

    diffusers names the execution device ``f"{type}:{index}"``. On a CPU, torch's ``.to("cpu:0")``
    of a ``Parameter`` copies it into a plain ``Tensor``, and accelerate's offload after the first
    module's forward then calls ``Tensor(value, requires_grad=...)``: a ``TypeError``. With ``cpu``
    no copy is made and the offload is exact (and saves nothing: the weights live in CPU memory).
    """
    from accelerate.hooks import AlignDevicesHook  # diffusers' offload dependency, imported where used

    moved = 0
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for module in component.modules():
            hook = getattr(module, "_hf_hook", None)
            if (
                isinstance(hook, AlignDevicesHook)
                and hook.execution_device is not None
                and torch.device(hook.execution_device).type == "cpu"
            ):
                hook.execution_device = torch.device("cpu")
                moved += 1
    return moved


def place(pipe: AcceleratedPipeline, preset: Preset, device: str | torch.device) -> None:
    """Put ``pipe``'s models on ``device`` the way ``preset.memory`` says."""
    device = torch.device(device)
    if preset.memory == "default":
        pipe.to(device)
    elif preset.memory == "offload":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_group_offload(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=device.type == "cuda",
        )
        pipe.enable_vae_tiling()
    pipe.enable_vae_slicing()
