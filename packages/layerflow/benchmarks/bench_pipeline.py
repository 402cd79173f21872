"""layerflow benchmark: denoising-step cost of the alpha representations, measured side by side.

CPU (always): time per denoising step of a small LayerFlow pipeline (CFG on, ``generate``, latents
only) for the official ``alpha_clip`` layout (4 clips) against ``latent_offset`` (alpha carried by
the transparent VAE in the foreground latent: 3 clips). Expected ratio <= 0.75 (25% fewer video
tokens, ~44% fewer attention pairs).

Real CogVideoX-2B configuration (computed, not run): tokens per sample for each layout and the
transformer FLOPs per denoising step (CFG: two samples), linear layers ``24 N D^2`` plus attention
``4 N^2 D`` per block, 30 blocks.

Usage: ``python bench_pipeline.py [--quick] [--json PATH]`` (see ``benchmarks/run_all.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from _rows import bench_parser, emitter

from layerflow.layout import LayerLayout
from layerflow.tiny import build_tiny_pipeline

BENCH = "layerflow"
PROMPTS = {
    "foreground": "a red circle",
    "background": "blue stripes",
    "composite": "a red circle over blue stripes",
}


emit = emitter(BENCH)


def step_times(
    alphas: tuple[str, ...], *, latent_size: int, frames: int, steps: int, repeats: int
) -> dict[str, float]:
    """Seconds per denoising step for each layout (CFG, latents only: no VAE work).

    CPU time of this (single-threaded) process for a call of ``steps`` steps, divided by ``steps``
    (prompt encoding and setup are a small share); CPU time rather than wall time because shared
    machines stall a process unpredictably. The layouts are timed in alternation and each figure is
    the best of ``repeats`` calls.
    """
    pipes = {}
    for alpha in alphas:
        pipe = build_tiny_pipeline(
            LayerLayout.official(alpha),  # type: ignore[arg-type]
            num_attention_heads=4,
            attention_head_dim=16,
            num_layers=2,
            sample_height=latent_size,
            sample_width=latent_size,
        )
        pipe.set_progress_bar_config(disable=True)
        pipes[alpha] = pipe
    size = latent_size * pipes[alphas[0]].geometry.spatial_compression

    def run(alpha: str, num_steps: int) -> float:
        start = time.process_time()
        pipes[alpha](
            PROMPTS,
            num_frames=frames,
            height=size,
            width=size,
            num_inference_steps=num_steps,
            output_type="latent",
        )
        return time.process_time() - start

    for alpha in alphas:
        run(alpha, 1)  # warm-up
    best = dict.fromkeys(alphas, float("inf"))
    for _ in range(repeats):
        for alpha in alphas:
            best[alpha] = min(best[alpha], run(alpha, steps))
    return {alpha: seconds / steps for alpha, seconds in best.items()}


def real_2b_figures(sink: Path | None) -> None:
    hidden, blocks, text, tokens_per_latent, latents_per_clip = 1920, 30, 226, 1350, 4
    print("CogVideoX-2B LayerFlow configuration (480x720, 16 frames per clip, 3 prompts, CFG):")
    per_step: dict[str, float] = {}
    for alpha in ("alpha_clip", "latent_offset"):
        clips = len(LayerLayout.official(alpha).clips)  # type: ignore[arg-type]
        n = 3 * text + clips * latents_per_clip * tokens_per_latent
        flops = 2 * blocks * (24 * n * hidden**2 + 4 * n * n * hidden)  # x2: both CFG branches
        per_step[alpha] = flops
        emit(sink, f"2B {alpha}: tokens per sample ({clips} clips)", n, "tokens")
        emit(sink, f"2B {alpha}: transformer FLOPs per denoising step (CFG)", flops / 1e12, "TFLOP")
    emit(
        sink,
        "2B latent_offset / alpha_clip FLOPs per step",
        per_step["latent_offset"] / per_step["alpha_clip"],
        "x",
    )


def main() -> None:
    parser = bench_parser(__doc__)
    args = parser.parse_args()
    torch.set_num_threads(1)
    latent_size, frames, steps, repeats = (16, 16, 2, 2) if args.quick else (16, 16, 4, 7)
    print(f"tiny pipeline, {latent_size}x{latent_size} latents, {frames} frames per clip, CFG, 1 thread:")
    seconds = step_times(
        ("alpha_clip", "latent_offset"), latent_size=latent_size, frames=frames, steps=steps, repeats=repeats
    )
    for alpha, value in seconds.items():
        emit(args.json, f"tiny {alpha}: CPU time per denoising step", value * 1e3, "ms")
    emit(
        args.json,
        "tiny latent_offset / alpha_clip time per step",
        seconds["latent_offset"] / seconds["alpha_clip"],
        "x",
        "<= 0.75",
    )
    real_2b_figures(args.json)


if __name__ == "__main__":
    main()
