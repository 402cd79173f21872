"""layerflow benchmark: the speed and memory presets and diffusers' cache methods on the trained tiny model.

The model is the demo's "base" column: the shipped pretrained text-to-video base
(``layerflow/demo/pretrained_base/``) loaded into the LayerFlow transformer as CogVideoX-2B is, with
the shipped demo VAE and the demo's T5, saved as a pipeline folder and loaded back. It samples all
four tasks on the demo's held-out synthetic clips at the demo's settings (4 frames of 32x32 per
layer, 20 steps, guidance 3, CFG), exactly and with each speed preset, each other cache method (the
tiny-model settings of ``layerflow.testing.TINY_CACHE_SETTINGS``) and each memory preset, same
seeds, side by side in one process on one CPU thread:

* quality vs exact: PSNR and MAE of the decoded generated layers (the given layer excluded) against
  the exact run's, pooled over tasks and samples, and the worst task's PSNR;
* the demo's metrics (``layerflow.metrics`` targets, each on its demo tasks) with and without it;
* compute: block rows (batch rows the blocks' attention and feed-forward actually computed,
  counted below every diffusers hook: the blocks' FLOPs) / exact, and CPU wall time of whole calls
  (text, transformer, VAE) / exact, the best of ``repeats`` calls timed in alternation;
* memory: the peak of the tensors a call holds (weights and inputs excluded: what a cache adds), on
  the first sample of each task, / exact. On a CPU the memory presets move nothing (the offload
  target is the memory the weights run in): their rows show what their hooks cost.

Usage: ``python bench_caches.py [--quick] [--json PATH] [--model FOLDER]`` (see
``benchmarks/run_all.py``); ``--model`` measures another pipeline folder of the demo's geometry, e.g.
the demo's fine-tuned LayerFlow model ``outputs/demo/train/stage3/final/pipeline``.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _rows import bench_parser, emitter
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from layerflow.demo.assets import load_or_build_assets
from layerflow.demo.base import PRETRAINED_BASE_DIR
from layerflow.demo.report import TARGET_TASKS
from layerflow.demo.run import DemoSettings, make_data, save_base, task_inputs
from layerflow.layout import TASKS
from layerflow.metrics import TARGETS, EvaluationReport, evaluate_output_dir, summarize
from layerflow.pipelines import LayerFlowOutput, LayerFlowPipeline
from layerflow.pipelines.acceleration import (
    SPEED_METHODS,
    cache_config,
    calibrate_mag_ratios,
    count_block_calls,
    preset_cache,
)
from layerflow.presets import Preset
from layerflow.testing import TINY_CACHE_SETTINGS, PeakTensorBytes
from layerflow.tiny import single_thread

emit = emitter("layerflow")
#: What is measured against exact: the two non-exact presets, then each cache method at the
#: tiny-model settings (``TINY_CACHE_SETTINGS``) where no preset already runs it.
PRESETS = ("fast", "fastest")
MEMORY_PRESETS = ("offload", "low")
METHODS = tuple(
    m for m in TINY_CACHE_SETTINGS if m not in {chosen[0] for chosen in SPEED_METHODS.values() if chosen}
)

Enable = Callable[[LayerFlowPipeline, list[float]], Any]


@dataclass
class Variant:
    """One column of the comparison: the pipeline it runs on and the cache config it enables per call
    (given the task's MagCache ratios; ``None``: no cache)."""

    pipe: LayerFlowPipeline
    cache: Enable | None = None


def variants(folder: Path, exact: LayerFlowPipeline, steps: int) -> dict[str, Variant]:
    """Label -> variant: exact, the speed presets, the other cache methods, the memory presets."""
    found = {"exact": Variant(exact)}
    for speed in PRESETS:
        found[f"--speed {speed} ({SPEED_METHODS[speed][0]})"] = Variant(  # type: ignore[index]
            exact, lambda pipe, _, speed=speed: preset_cache(pipe, Preset(speed=speed))
        )
    for method in METHODS:
        settings = dict(TINY_CACHE_SETTINGS[method])

        def enable(
            pipe: LayerFlowPipeline, ratios: list[float], method: str = method, settings=settings
        ) -> Any:
            extra = {"mag_ratios": ratios, "num_inference_steps": steps} if method == "mag" else {}
            return cache_config(pipe, method, **settings, **extra)  # type: ignore[arg-type]

        found[method] = Variant(exact, enable)
    for memory in MEMORY_PRESETS:  # a pipeline of its own: group offload cannot be undone
        pipe = load_pipeline(folder)
        pipe.enable_preset(Preset(memory=memory), "cpu")
        found[f"--memory {memory}"] = Variant(pipe)
    return found


@dataclass
class Tally:
    """What one variant did over every task and sample."""

    rows: int = 0
    seconds: float = 0.0
    peak_mib: float = 0.0  # the largest over tasks, first sample
    squared: dict[str, float] = field(default_factory=dict)  # per task: sum of squared errors
    absolute: float = 0.0
    values: dict[str, int] = field(default_factory=dict)  # per task: compared values
    reports: dict[str, list[EvaluationReport]] = field(default_factory=lambda: {t: [] for t in TASKS})

    def psnr(self, task: str | None = None) -> float:
        tasks = [task] if task else list(self.squared)
        mse = sum(self.squared[t] for t in tasks) / sum(self.values[t] for t in tasks)
        return math.inf if mse == 0 else 10 * math.log10(1 / mse)

    def mae(self) -> float:
        return self.absolute / sum(self.values.values())


def generated(output: LayerFlowOutput, task: str) -> torch.Tensor:
    """The decoded layers the task generated (the given one excluded), flattened, in [0, 1]."""
    given = {"foreground_to_background": "foreground", "background_to_foreground": "background"}
    given["decompose"] = "composite"
    return torch.cat([v.flatten() for k, v in sorted(output.layers.items()) if k != given.get(task)])


def build_pipeline_folder(root: Path) -> Path:
    """The demo's base pipeline written as a pipeline folder (as the demo's "base" column is)."""
    settings = DemoSettings()
    assets = load_or_build_assets(settings.assets, progress=False)
    save_base(settings, assets, PRETRAINED_BASE_DIR, root / "base")
    return root / "base"


def load_pipeline(folder: Path) -> LayerFlowPipeline:
    pipe = LayerFlowPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def peak_mib(pipe: LayerFlowPipeline, call: dict[str, Any], seed: int) -> float:
    """MiB of the tensors a call holds at its peak (weights and inputs excluded), untimed."""
    existing = {
        t.untyped_storage().data_ptr()
        for model in pipe.components.values()
        if isinstance(model, torch.nn.Module)
        for t in [*model.parameters(), *model.buffers()]
    }
    existing |= {t.untyped_storage().data_ptr() for t in (call["conditions"] or {}).values()}
    with PeakTensorBytes(existing) as tracker:
        pipe(**call, generator=torch.Generator().manual_seed(seed))
    return tracker.peak / 2**20


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--model", type=Path, default=None, help="a pipeline folder (default: the demo's base)"
    )
    args = parser.parse_args()
    sink: Path | None = args.json
    diffusers_logging.set_verbosity_error()  # FasterCache's "experimental" warning at every enable
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    samples, steps, repeats = (1, 6, 1) if args.quick else (4, DemoSettings().inference_steps, 2)
    tasks = TASKS[-2:] if args.quick else TASKS
    settings = DemoSettings(num_train=0, num_heldout=samples)
    frames, height, width = settings.geometry
    with tempfile.TemporaryDirectory() as folder, single_thread():
        root = Path(folder)
        folder = args.model or build_pipeline_folder(root)
        pipe = load_pipeline(folder)
        _, heldout = make_data(settings, root / "data", progress=False)
        sample_dirs = sorted(p for p in heldout.iterdir() if p.is_dir())
        chosen = variants(folder, pipe, steps)
        tallies = {label: Tally() for label in chosen}
        print(
            f"{args.model or 'trained tiny base (demo)'}, {len(pipe.transformer.transformer_blocks)} blocks, "
            f"{len(sample_dirs)} held-out samples x {len(tasks)} tasks, {frames} frames of "
            f"{height}x{width} per layer, {steps} steps, CFG {settings.guidance_scale}, 1 thread; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        for task in tasks:
            ratios: list[float] = []
            for index, sample in enumerate(sample_dirs):
                prompts, conditions = task_inputs(task, sample)
                call = {
                    "prompts": prompts,
                    "task": task,
                    "conditions": conditions or None,
                    "num_frames": frames,
                    "height": height,
                    "width": width,
                    "num_inference_steps": steps,
                    "guidance_scale": settings.guidance_scale,
                }
                if not ratios:  # MagCache calibrated once per task, as a user would
                    ratios = calibrate_mag_ratios(pipe, **call, generator=torch.Generator().manual_seed(0))
                best: dict[str, float] = {}
                outputs: dict[str, LayerFlowOutput] = {}
                for repeat in range(repeats + (index == 0)):  # alternate; the best time of each
                    for label, variant in chosen.items():
                        tally, model = tallies[label], variant.pipe.transformer
                        config = None if variant.cache is None else variant.cache(variant.pipe, ratios)
                        if config is not None:
                            model.enable_cache(config)
                        try:
                            if repeat == repeats:  # first sample: one more, untimed, for memory
                                tally.peak_mib = max(tally.peak_mib, peak_mib(variant.pipe, call, index))
                                continue
                            with count_block_calls(model) as calls:
                                start = time.perf_counter()
                                output = variant.pipe(**call, generator=torch.Generator().manual_seed(index))
                                seconds = time.perf_counter() - start
                        finally:
                            if config is not None:
                                model.disable_cache()
                        outputs[label] = output
                        best[label] = min(best.get(label, math.inf), seconds)
                        if repeat == 0:
                            tally.rows += calls.run
                for label, tally in tallies.items():
                    tally.seconds += best[label]
                    exact, got = generated(outputs["exact"], task), generated(outputs[label], task)
                    difference = got.float() - exact.float()
                    tally.squared[task] = tally.squared.get(task, 0.0) + difference.square().sum().item()
                    tally.values[task] = tally.values.get(task, 0) + difference.numel()
                    tally.absolute += difference.abs().sum().item()
                    target = root / "out" / label.split(" ")[-1].strip("()") / task / sample.name
                    outputs[label].save(target, seed=index, formats=["png"], overwrite=True)
                    tally.reports[task].append(evaluate_output_dir(target, reference=sample))
        report(sink, tallies, tasks, "trained base" if args.model is None else f"model {args.model}")


def report(sink: Path | None, tallies: dict[str, Tally], tasks: tuple[str, ...], model: str) -> None:
    exact = tallies["exact"]
    targets = [name for name in TARGETS if set(TARGET_TASKS[name]) <= set(tasks)]

    def target(tally: Tally, name: str) -> float | None:
        return summarize([r for t in TARGET_TASKS[name] for r in tally.reports[t]]).value(name)

    header = (
        "| variant | PSNR vs exact (dB) | worst task | MAE vs exact | block rows | CPU time | peak tensors |"
    )
    print("\n" + header + "".join(f" {name} |" for name in targets))
    print("|" + " --- |" * (7 + len(targets)))
    for label, tally in tallies.items():
        cells = [
            f"{tally.psnr():.1f}",
            f"{min(tally.psnr(t) for t in tasks):.1f}",
            f"{tally.mae():.4f}",
            f"{tally.rows / exact.rows:.2f}",
            f"{tally.seconds / exact.seconds:.2f}",
            f"{tally.peak_mib / exact.peak_mib:.2f}",
        ]
        cells += [f"{value:.3f}" if (value := target(tally, name)) is not None else "-" for name in targets]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\nexact: {exact.seconds:.1f} s of calls, peak tensors {exact.peak_mib:.1f} MiB\n")
    for label, tally in tallies.items():
        if label == "exact":
            continue
        name = f"{model}, {label}"
        emit(sink, f"{name}: PSNR vs exact", tally.psnr(), "dB")
        emit(sink, f"{name}: MAE vs exact", tally.mae(), "abs")
        emit(sink, f"{name}: block rows / exact", tally.rows / exact.rows, "x")
        emit(sink, f"{name}: CPU wall time / exact", tally.seconds / exact.seconds, "x")
        emit(sink, f"{name}: peak tensor memory / exact", tally.peak_mib / exact.peak_mib, "x")


if __name__ == "__main__":
    main()
