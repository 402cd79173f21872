"""Transparent-VAE costs: decoder time and peak memory per frame with TTA off vs on, and the offset
encoder's cost relative to the base VAE encoder it rides on.

Follows ``benchmarks/run_all.py``: ``--json PATH`` appends one JSON row per figure, ``--quick`` uses
small sizes. Networks are the released architectures with random weights (cost does not depend on the
values): the UNet1024 decoder, LayerDiffuse's offset encoder and an SD-shaped diffusers AutoencoderKL.
Peak memory is measured in a fresh process per case (CPU: peak RSS above the post-setup RSS; CUDA:
``max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

BENCHMARK = "transparent-vae"


def _timed(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median wall time in ms (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _decoder_case(size: int, tta: bool, device: str) -> Callable[[], object]:
    from transparent_vae import TransparentDecoder

    torch.manual_seed(0)
    decoder = TransparentDecoder().to(device).eval()
    pixels = torch.rand(1, 3, size, size, device=device)
    latent = torch.randn(1, 4, size // 8, size // 8, device=device)

    def run() -> object:
        with torch.no_grad():
            return decoder(pixels, latent, tta=tta)

    return run


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_memory_child(size: int, tta: bool, device: str, queue: multiprocessing.Queue) -> None:
    run = _decoder_case(size, tta, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        queue.put((torch.cuda.max_memory_allocated() - base) / 2**20)
    else:
        base = _current_rss_mib()
        run()
        queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)


def _peak_memory_mib(size: int, tta: bool, device: str) -> float:
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    process = context.Process(target=_peak_memory_child, args=(size, tta, device, queue))
    process.start()
    value = queue.get(timeout=600)
    process.join()
    return float(value)


def _encoder_costs(size: int, device: str, repeats: int) -> tuple[float, float]:
    from diffusers import AutoencoderKL

    from transparent_vae import LatentOffsetEncoder

    torch.manual_seed(0)
    base = (
        AutoencoderKL(  # SD 1.5 / SDXL VAE shape
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
        )
        .to(device)
        .eval()
    )
    offset = LatentOffsetEncoder().to(device).eval()
    pixels = torch.rand(1, 3, size, size, device=device) * 2 - 1
    features = torch.rand(1, 4, size, size, device=device)
    with torch.no_grad():
        base_ms = _timed(lambda: base.encode(pixels).latent_dist.mean, repeats, device)
        offset_ms = _timed(lambda: offset(features), repeats, device)
    return base_ms, offset_ms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, default=None, help="append one JSON row per figure here")
    parser.add_argument("--quick", action="store_true", help="64x64 frames, one repeat")
    parser.add_argument("--size", type=int, default=None, help="frame side in pixels (default 256, quick 64)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    size = args.size or (64 if args.quick else 256)
    repeats = 1 if args.quick else 3
    if size % 64:
        parser.error(f"--size must be a multiple of 64 (the UNet1024 depth), got {size}")

    rows: list[dict[str, object]] = []

    def record(measure: str, value: float, unit: str, target: str = "") -> None:
        row = {"benchmark": BENCHMARK, "measure": measure, "value": round(value, 4), "unit": unit}
        rows.append(row | ({"target": target} if target else {}))
        print(f"  {measure:<52} {value:>10.3f} {unit}")

    print(
        f"transparent-vae on {args.device}, {size}x{size}, UNet1024 decoder ({'quick' if args.quick else 'full'})"
    )
    # Interleave the two cases so that load on a shared machine hits both alike.
    off_case, on_case = _decoder_case(size, False, args.device), _decoder_case(size, True, args.device)
    off_times, on_times = [], []
    for _ in range(repeats):
        off_times.append(_timed(off_case, 1, args.device))
        on_times.append(_timed(on_case, 1, args.device))
    off_ms, on_ms = statistics.median(off_times), statistics.median(on_times)
    record(f"decode {size}px TTA off, per frame", off_ms, "ms")
    record(f"decode {size}px TTA on (8 passes), per frame", on_ms, "ms")
    record("decode TTA on / off", on_ms / off_ms, "x", "~8")
    off_mib = _peak_memory_mib(size, False, args.device)
    on_mib = _peak_memory_mib(size, True, args.device)
    record(f"decode {size}px TTA off, peak memory per frame", off_mib, "MiB")
    record(f"decode {size}px TTA on, peak memory per frame", on_mib, "MiB")
    base_ms, offset_ms = _encoder_costs(size, args.device, repeats)
    record(f"SD-VAE encoder {size}px", base_ms, "ms")
    record(f"offset encoder {size}px", offset_ms, "ms")
    record("offset encoder / SD-VAE encoder time", offset_ms / base_ms, "x", "< 0.5")
    if args.json:
        with args.json.open("a") as sink:
            for row in rows:
                sink.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
