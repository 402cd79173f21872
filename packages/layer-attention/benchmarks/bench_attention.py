"""layer-attention benchmark: measured side by side in one run, figures appended as JSON rows.

CPU (always): at N ~ 4k with a 50%-allowed layout, the query-group SDPA path (``backend="sdpa"``)
against SDPA with the dense N x N mask: time (forward, forward + backward) and peak memory.

CUDA (when present): TFLOP/s of the Triton kernel against SDPA (flash for full attention, grouped
for masked), compiled FlexAttention with the layout's ``BlockMask``, and xformers, forward and
backward, at the LayerFlow RGBA shape (B=1, H=30, D=64, N=22,278, bf16), full and masked layouts.
FLOPs count allowed pairs only (4 * D * allowed pairs per head; backward 2.5x), so masked layouts
are compared on useful work.

Usage: ``python bench_attention.py [--quick] [--json PATH]`` (see ``benchmarks/run_all.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from layer_attention import SegmentLayout, layer_attention
from layer_attention.dispatch import backend_reasons
from layer_attention.testing import conditional_layout, layerflow_layout

BENCH = "layer-attention"


def emit(sink: Path | None, measure: str, value: float, unit: str, target: str = "") -> None:
    row = {"benchmark": BENCH, "measure": measure, "value": value, "unit": unit}
    if target:
        row["target"] = target
    print(f"  {measure:<58} {value:>12.3f} {unit} {target}")
    if sink is not None:
        with sink.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------- CPU
def _peak_rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak-RSS watermark
        return True
    except OSError:
        return False


def _current_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_setup(quick: bool) -> tuple[SegmentLayout, dict[str, Callable[[], torch.Tensor]], str]:
    lengths = [250, 262, 251, 261] if quick else [1000, 1030, 1010, 1056]
    heads, head_dim = (2, 64) if quick else (4, 64)
    # query segment i attends key segment j when i + j is even: two query groups, half of all pairs
    allowed = [[(i + j) % 2 == 0 for j in range(4)] for i in range(4)]
    layout = SegmentLayout(lengths, allowed)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(1, heads, layout.seq_len, head_dim, generator=generator).requires_grad_()
        for _ in range(3)
    )
    mask = layout.dense_mask()
    cases: dict[str, Callable[[], torch.Tensor]] = {
        "sdpa-group": lambda: layer_attention(q, k, v, layout, backend="sdpa"),
        "sdpa-dense-mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
    }
    return layout, cases, f"B=1 H={heads} D={head_dim} fp32"


def _step(fn: Callable[[], torch.Tensor], backward: bool) -> None:
    out = fn()
    if backward:
        out.sum().backward()


def _peak_memory_child(case: str, mode: str, quick: bool) -> None:
    """Runs in a fresh process: print the peak extra resident memory (MiB) of one case."""
    torch.set_num_threads(1)
    _, cases, _ = _cpu_setup(quick)
    backward = mode == "fwd+bwd"
    _step(cases[case], backward)  # warm-up; its memory is returned (see the mmap threshold below)
    if not _reset_peak_rss():
        print("nan")
        return
    before = _current_rss_bytes()
    _step(cases[case], backward)
    after = _peak_rss_bytes()
    print("nan" if after is None else (after - before) / 2**20)


def cpu_peak_memory(case: str, mode: str, quick: bool) -> float:
    """Peak memory of one case, measured alone in a child process.

    glibc keeps freed memory of a warm process resident, which hides peaks; a fixed mmap threshold
    makes every large allocation an mmap that is unmapped when freed, so peak RSS tracks live memory.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, __file__, "--peak-memory-of", case, mode] + (["--quick"] if quick else [])
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def cpu_time(fn: Callable[[], torch.Tensor], backward: bool, reps: int) -> float:
    """Median seconds after one warm-up."""
    _step(fn, backward)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        _step(fn, backward)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_cpu(sink: Path | None, quick: bool) -> None:
    # one thread: the machine may be shared, and thread contention would swamp the comparison
    torch.set_num_threads(1)
    layout, cases, shape = _cpu_setup(quick)
    reps = 2 if quick else 3
    print(f"CPU (1 thread), {shape}:\n{layout}")
    for mode in ("fwd", "fwd+bwd"):
        results = {}
        for name, fn in cases.items():
            seconds = cpu_time(fn, mode == "fwd+bwd", reps)
            peak = cpu_peak_memory(name, mode, quick)
            results[name] = (seconds, peak)
            emit(sink, f"cpu N={layout.seq_len} {name} {mode} time", seconds * 1e3, "ms")
            emit(sink, f"cpu N={layout.seq_len} {name} {mode} peak memory", peak, "MiB")
        group, dense = results["sdpa-group"], results["sdpa-dense-mask"]
        emit(sink, f"cpu {mode}: dense-mask time / group time", dense[0] / group[0], "x", ">= 1")
        emit(sink, f"cpu {mode}: dense-mask peak memory / group peak memory", dense[1] / group[1], "x", "> 1")


# --------------------------------------------------------------------------------------------- CUDA
def cuda_time(fn: Callable[[], object], reps: int) -> float:
    """Median milliseconds of ``fn`` with CUDA events."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _providers(layout: SegmentLayout, q: torch.Tensor) -> dict[str, Callable[..., torch.Tensor]]:
    providers: dict[str, Callable[..., torch.Tensor]] = {}
    reasons = backend_reasons(q)
    for backend in ("triton", "sdpa", "xformers"):
        if not reasons[backend]:
            providers[backend] = lambda q, k, v, backend=backend: layer_attention(
                q, k, v, layout, backend=backend
            )
        else:
            print(f"  skip {backend}: {'; '.join(reasons[backend])}")
    try:
        from torch.nn.attention.flex_attention import flex_attention

        compiled = torch.compile(flex_attention)
        block_mask = layout.to_block_mask(128, device=q.device)
        providers["flex"] = lambda q, k, v: compiled(q, k, v, block_mask=block_mask)
    except Exception as error:  # no FlexAttention in this torch: report and carry on with the rest
        print(f"  skip flex: {type(error).__name__}: {error}")
    return providers


def _bench_cuda_layout(sink: Path | None, label: str, layout: SegmentLayout, heads: int, reps: int) -> None:
    head_dim = 64
    print(f" layout {label}: {layout}")
    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(
            1, heads, layout.seq_len, head_dim, device="cuda", dtype=torch.bfloat16, generator=generator
        ).requires_grad_()
        for _ in range(3)
    )
    grad = torch.randn_like(q)
    flops = 4 * head_dim * heads * layout.allowed_pairs
    tflops: dict[tuple[str, str], float] = {}
    for name, fn in _providers(layout, q).items():
        fwd_ms = cuda_time(lambda fn=fn: fn(q, k, v), reps)
        both_ms = cuda_time(lambda fn=fn: torch.autograd.grad(fn(q, k, v), (q, k, v), grad), reps)
        tflops[name, "fwd"] = flops / (fwd_ms * 1e-3) / 1e12
        tflops[name, "bwd"] = 2.5 * flops / (max(both_ms - fwd_ms, 1e-6) * 1e-3) / 1e12
        for mode in ("fwd", "bwd"):
            emit(sink, f"cuda N={layout.seq_len} {label} {name} {mode}", tflops[name, mode], "TFLOP/s")
    for mode in ("fwd", "bwd"):
        for other in ("flex", "sdpa", "xformers"):
            if ("triton", mode) in tflops and (other, mode) in tflops:
                target = ">= 1" if other == "flex" and mode == "fwd" else ""
                ratio = tflops["triton", mode] / tflops[other, mode]
                emit(sink, f"cuda {label} {mode}: triton / {other}", ratio, "x", target)


def bench_cuda(sink: Path | None, quick: bool) -> None:
    tokens_per_clip = 1350 if quick else 5400  # 1 or 4 latent frames of 30 x 45 patches
    heads, reps = 30, (5 if quick else 20)
    layouts = {
        "full": layerflow_layout(3, 4, tokens_per_clip),
        "masked (condition clip)": conditional_layout(3, 4, tokens_per_clip, condition_clips=(0,)),
        "masked (per-layer)": SegmentLayout.block_diagonal([3 * 226] + [tokens_per_clip] * 4),
    }
    print(f"CUDA: {torch.cuda.get_device_name()}, B=1 H={heads} D=64 bf16")
    for label, layout in layouts.items():
        _bench_cuda_layout(sink, label, layout, heads, reps)
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, default=None, help="append one JSON row per figure here")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for smoke runs")
    parser.add_argument("--peak-memory-of", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory_of:
        _peak_memory_child(*args.peak_memory_of, quick=args.quick)
        return
    bench_cpu(args.json, args.quick)
    if torch.cuda.is_available():
        bench_cuda(args.json, args.quick)
    else:
        print("CUDA: not available, GPU figures skipped")


if __name__ == "__main__":
    main()
