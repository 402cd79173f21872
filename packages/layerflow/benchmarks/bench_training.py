"""layerflow training benchmark: samples/s and peak memory of the tiny stage-1 config, side by side.

Cases (same data, model, batch and seed): precomputed cache vs on-the-fly VAE + T5 encoding, each
with and without gradient checkpointing. Each case runs in its own subprocess so its peak memory is
its own: ``resource`` peak RSS on CPU (and the rise above the RSS at the first step, which excludes
imports and model construction), ``torch.cuda.max_memory_allocated`` on GPU. Ratios are reported
against the cached, no-checkpointing case.

Usage: ``python bench_training.py [--quick] [--json PATH] [--device cpu|cuda]`` (see ``benchmarks/run_all.py``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _rows import bench_parser, emitter

BENCH = "layerflow"
CASES = {
    "cache": {"precompute": True, "checkpointing": False},
    "cache+ckpt": {"precompute": True, "checkpointing": True},
    "on-the-fly": {"precompute": False, "checkpointing": False},
    "on-the-fly+ckpt": {"precompute": False, "checkpointing": True},
}
WARMUP = 2


emit = emitter(BENCH)


def rss_mib() -> float:
    """Current resident set size (Linux ``/proc``), MiB."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_case(name: str, root: Path, steps: int, device: str) -> dict[str, float]:
    """One case in this process: train ``WARMUP + steps`` steps, time the last ``steps``."""
    import torch

    from layerflow.training.testing import tiny_test_config
    from layerflow.training.trainer import LayerFlowTrainer

    case = CASES[name]
    overrides = {
        "model": {"gradient_checkpointing": case["checkpointing"]},
        "data": {
            "height": 32,
            "width": 32,
            "precompute": case["precompute"],
            "cache_dir": str(root / "cache"),
            "sources": [{"kind": "synthetic", "num_samples": 16}],
        },
        "optim": {"batch_size": 4},
        "run": {
            "output_dir": str(root / name),
            "max_steps": WARMUP + steps,
            "checkpoint_every": 10_000,
            "mixed_precision": "bf16" if device == "cuda" else "no",
            "num_threads": 1 if device == "cpu" else None,
        },
    }
    config = tiny_test_config(root, 1, overrides)
    times: list[float] = []
    start_rss: list[float] = []

    def on_step_end(step: int, loss: float) -> None:
        times.append(time.perf_counter())
        if step == 1:
            start_rss.append(rss_mib())
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()

    trainer = LayerFlowTrainer(config, on_step_end=on_step_end)
    trainer.train()
    measured = times[WARMUP:]
    samples = config.optim.batch_size * (len(measured) - 1)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "samples_per_s": samples / (measured[-1] - measured[0]),
        "peak_rss_mib": peak_rss,
        "rss_rise_mib": peak_rss - start_rss[0],
    }
    if device == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--case", choices=sorted(CASES), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = 4 if args.quick else 12

    if args.case is not None:  # child: one case, result as the last stdout line
        print(json.dumps(run_case(args.case, args.root, steps, args.device)))
        return 0

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            command = [sys.executable, __file__, "--case", name, "--root", tmp, "--device", args.device]
            command += ["--quick"] if args.quick else []
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr[-4000:], file=sys.stderr)
                return 1
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"layerflow training, tiny stage-1 config (32x32, 8 frames x 4 clips, batch 4, {args.device}, {steps} timed steps):"
    )
    print(
        f"  {'case':<18} {'samples/s':>10} {'peak RSS MiB':>13} {'RSS rise MiB':>13}"
        + ("  CUDA peak MiB" if args.device == "cuda" else "")
    )
    for name, result in results.items():
        cuda = f"  {result['cuda_peak_mib']:>13.1f}" if "cuda_peak_mib" in result else ""
        print(
            f"  {name:<18} {result['samples_per_s']:>10.2f} {result['peak_rss_mib']:>13.1f} {result['rss_rise_mib']:>13.1f}{cuda}"
        )
    base = results["cache"]
    for name, result in results.items():
        emit(args.json, f"training samples/s, {name} ({args.device})", result["samples_per_s"], "samples/s")
        memory = "cuda_peak_mib" if args.device == "cuda" else "peak_rss_mib"
        emit(args.json, f"training peak memory, {name} ({args.device})", result[memory], "MiB")
    emit(
        args.json,
        "on-the-fly / cache samples/s",
        results["on-the-fly"]["samples_per_s"] / base["samples_per_s"],
        "x",
        "< 1",
    )
    emit(
        args.json,
        "checkpointing / none samples/s (cache)",
        results["cache+ckpt"]["samples_per_s"] / base["samples_per_s"],
        "x",
        "< 1",
    )
    if args.device == "cuda":
        ratio = results["cache+ckpt"]["cuda_peak_mib"] / base["cuda_peak_mib"]
        emit(args.json, "checkpointing / none CUDA peak memory (cache)", ratio, "x", "< 1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
