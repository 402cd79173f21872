"""layerflow benchmark: the embedded demo's tiny pipeline end to end, every task and stage side by side.

One process builds the demo's tiny components (VAE/T5 cached in a temporary folder, few VAE steps:
speed does not depend on their quality), trains each of the three stages for a few steps through the
real trainer and samples each of the four tasks through the real ``LayerFlowPipeline`` on a
held-out sample. Figures: CPU time per training step of each stage, time per denoising step
(difference of an N-step and a 1-step call, so prompt encoding and VAE work cancel) and per sample
(N steps, decoding included) of each task, and the ratios of each to ``generate`` / stage 1.

Usage: ``python bench_end_to_end.py [--quick] [--json PATH]`` (see ``benchmarks/run_all.py``).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from _rows import bench_parser, emitter

from layerflow.demo.assets import load_or_build_assets
from layerflow.demo.run import TASKS, DemoSettings, make_data, run_task, save_base, stage_overrides
from layerflow.pipelines import LayerFlowPipeline
from layerflow.training import load_config, train

BENCH = "layerflow end-to-end"


emit = emitter(BENCH)


def training_step_times(
    settings: DemoSettings, base: Path, train_root: Path, root: Path, steps: int
) -> dict[int, float]:
    """CPU seconds per optimizer step of each stage (steps after the first: setup excluded)."""
    times = {}
    for stage in (1, 2, 3):
        stamps: list[float] = []
        overrides = stage_overrides(settings, stage, base, train_root, root, progress=False)
        overrides["run"]["max_steps"] = steps
        overrides["run"]["checkpoint_every"] = steps
        config = load_config(None, stage, overrides)
        train(config, on_step_end=lambda step, loss, stamps=stamps: stamps.append(time.process_time()))
        times[stage] = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return times


def sampling_times(
    pipeline: LayerFlowPipeline, settings: DemoSettings, sample: Path, steps: int, repeats: int
) -> dict[str, tuple[float, float]]:
    """Per task: (CPU seconds per denoising step, CPU seconds per sample of ``steps`` steps), best of ``repeats``.

    Steps are timed inside the denoising loop (step-end callback stamps), so prompt encoding, VAE
    encode/decode and writing stay out of the per-step figure.
    """
    pipeline.set_progress_bar_config(disable=True)
    best: dict[str, list[float]] = {task: [float("inf"), float("inf")] for task in TASKS}
    for task in TASKS:  # warm-up: lazy initialisation and allocator growth stay out of the figures
        run_task(pipeline, settings, task, sample, 1, seed=0)
    for _ in range(repeats):
        for task in TASKS:  # tasks alternate within each repeat: side by side, same machine state
            stamps: list[float] = []

            def stamp(
                pipe: object, step: int, timestep: object, tensors: dict, stamps: list = stamps
            ) -> dict:
                stamps.append(time.process_time())
                return {}

            start = time.process_time()
            run_task(pipeline, settings, task, sample, steps, seed=0, callback_on_step_end=stamp)
            full = time.process_time() - start
            best[task][0] = min(best[task][0], (stamps[-1] - stamps[0]) / (len(stamps) - 1))
            best[task][1] = min(best[task][1], full)
    return {task: (values[0], values[1]) for task, values in best.items()}


def main() -> None:
    parser = bench_parser(__doc__)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = DemoSettings()
    settings = replace(
        settings,
        num_train=settings.batch_size,
        num_heldout=1,
        assets=replace(settings.assets, vae_steps=1, vae_train_samples=1, vae_eval_samples=1),
    )
    train_steps, sample_steps, repeats = (4, 5, 1) if args.quick else (12, 25, 3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_root, heldout = make_data(settings, root / "data", progress=False)
        assets = load_or_build_assets(settings.assets, root / "cache", progress=False)
        pipeline = save_base(settings, assets, root / "base")
        print(
            f"{BENCH}: demo model, {settings.geometry} (frames, height, width), batch {settings.batch_size}"
        )
        sampling = sampling_times(pipeline, settings, sorted(heldout.iterdir())[0], sample_steps, repeats)
        training = training_step_times(settings, root / "base", train_root, root / "train", train_steps)
    step_unit, reference = 1e3, sampling["generate"]
    for task, (per_step, per_sample) in sampling.items():
        emit(args.json, f"{task}: CPU ms per denoising step (CFG)", per_step * step_unit, "ms")
        emit(args.json, f"{task}: CPU s per sample ({sample_steps} steps, decoded)", per_sample, "s")
        if task != "generate":
            emit(args.json, f"{task} / generate: time per denoising step", per_step / reference[0], "x")
    for stage, seconds in training.items():
        emit(
            args.json,
            f"stage {stage}: CPU ms per training step (batch {settings.batch_size})",
            seconds * 1e3,
            "ms",
        )
        if stage != 1:
            emit(args.json, f"stage {stage} / stage 1: time per training step", seconds / training[1], "x")


if __name__ == "__main__":
    main()
