"""layerflow benchmark: diffusers' cache methods on the LayerFlow pipeline, side by side.

For each cache method (``layerflow.pipelines.acceleration.CACHE_METHODS``, with the tiny-model
settings of ``layerflow.testing.TINY_CACHE_SETTINGS``) against the plain pipeline, on every task:

* block rows: batch rows the blocks' attention and feed-forward actually computed, cached / plain
  (counted below every diffusers hook);
* wall time: seconds of a whole call (CFG, latents only), cached / plain, single-threaded CPU, the
  best of ``repeats`` calls timed in alternation;
* output change: ``|cached - plain| / |plain|`` of the latents (same seed).

This is a small random model: the figures show what each method skips and what its bookkeeping
costs, not the quality of a trained model.

Usage: ``python bench_caches.py [--quick] [--json PATH]`` (see ``benchmarks/run_all.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from _rows import bench_parser, emitter

from layerflow.layout import LayerLayout
from layerflow.pipelines import LayerFlowPipeline
from layerflow.pipelines.acceleration import (
    CACHE_METHODS,
    cache_config,
    calibrate_mag_ratios,
    count_block_calls,
)
from layerflow.testing import TINY_CACHE_SETTINGS, build_tiny_pipeline, random_layer_frames

emit = emitter("layerflow")
TASKS = ("generate", "foreground_to_background", "background_to_foreground", "decompose")
PROMPTS = {
    "foreground": "a red circle",
    "background": "blue stripes",
    "composite": "a red circle over blue stripes",
}


def call_kwargs(pipe: LayerFlowPipeline, task: str, *, frames: int, size: int, steps: int) -> dict[str, Any]:
    task_layout = pipe.layer_layout.for_task(task)
    pixels = random_layer_frames(pipe.layer_layout, frames, size, size, seed=3)
    return {
        "prompts": {layer.name: PROMPTS[layer.name] for layer in task_layout.prompt_layers},
        "task": task,
        "conditions": {layer.name: pixels[layer.name] for layer in task_layout.condition_layers} or None,
        "num_frames": frames,
        "height": size,
        "width": size,
        "num_inference_steps": steps,
        "guidance_scale": 6.0,
        "output_type": "latent",
    }


def timed(pipe: LayerFlowPipeline, config: Any, call: dict[str, Any]) -> tuple[torch.Tensor, int, float]:
    """Latents, block rows and wall seconds of one call with ``config`` enabled (``None``: plain)."""
    if config is not None:
        pipe.transformer.enable_cache(config)
    try:
        with count_block_calls(pipe.transformer) as calls:
            start = time.perf_counter()
            latents = pipe(**call, generator=torch.Generator().manual_seed(0)).latents
            seconds = time.perf_counter() - start
    finally:
        if config is not None:
            pipe.transformer.disable_cache()
    return latents, calls.run, seconds


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    sink: Path | None = args.json
    torch.set_num_threads(1)
    blocks, frames, size, steps, repeats = (6, 8, 32, 10, 2) if args.quick else (8, 8, 32, 20, 3)
    tasks = TASKS[-1:] if args.quick else TASKS
    pipe = build_tiny_pipeline(LayerLayout.official(), num_layers=blocks)
    pipe.set_progress_bar_config(disable=True)
    totals = {
        method: {"rows": 0, "plain_rows": 0, "seconds": 0.0, "plain_seconds": 0.0} for method in CACHE_METHODS
    }
    changes: dict[str, list[float]] = {method: [] for method in CACHE_METHODS}
    print(
        f"tiny random pipeline, {blocks} blocks, {frames} frames of {size}x{size}, {steps} steps, CFG, 1 thread"
    )
    for task in tasks:
        call = call_kwargs(pipe, task, frames=frames, size=size, steps=steps)
        ratios = calibrate_mag_ratios(pipe, **call)
        for method in CACHE_METHODS:
            settings = dict(TINY_CACHE_SETTINGS[method])
            if method == "mag":
                settings.update(mag_ratios=ratios, num_inference_steps=steps)
            best = {"plain": float("inf"), "cached": float("inf")}
            for _ in range(repeats):  # alternate, keep the best of each
                plain, plain_rows, seconds = timed(pipe, None, call)
                best["plain"] = min(best["plain"], seconds)
                cached, rows, seconds = timed(pipe, cache_config(pipe, method, **settings), call)
                best["cached"] = min(best["cached"], seconds)
            total = totals[method]
            total["rows"] += rows
            total["plain_rows"] += plain_rows
            total["seconds"] += best["cached"]
            total["plain_seconds"] += best["plain"]
            changes[method].append(((cached - plain).norm() / plain.norm()).item())
    for method in CACHE_METHODS:
        total = totals[method]
        emit(sink, f"cache {method}: block rows run / plain", total["rows"] / total["plain_rows"], "x")
        emit(sink, f"cache {method}: CPU wall time / plain", total["seconds"] / total["plain_seconds"], "x")
        emit(sink, f"cache {method}: latent change (max over tasks)", max(changes[method]), "rel")


if __name__ == "__main__":
    main()
