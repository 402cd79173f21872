"""layerflow benchmark: the joint VAE pass (official) against per-clip VAE passes, side by side.

Encode (posterior sample) + decode of every clip of the official RGBA layout (4 clips: foreground,
alpha, background, composite) through the one clip codec, with a small CogVideoX VAE:

* time: CPU time of this single-threaded process, best of ``repeats`` alternating calls;
* peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above the resident models and inputs;
  on CPU the peak of the bytes held by tensors the work creates (every op output is tracked by
  its storage until its last tensor dies; weights and inputs excluded), the CPU stand-in for it.

``joint_tiled``: the joint pass with VAE tiling (half-size spatial tiles, each over the whole
video), the bounded-memory joint pass; its decoded frames are compared with the untiled joint
pass (a random VAE: the change is far larger than a trained VAE's, see ``tests/test_vae_tiling.py``).

The joint pass keeps the whole video's activations alive in one call (frame batches cover all
frames), where per-clip passes free each clip's; it is what the official checkpoints were trained on.

Usage: ``python bench_vae_pass.py [--quick] [--json PATH]`` (see ``benchmarks/run_all.py``).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from _rows import bench_parser, emitter
from diffusers.models.autoencoders.autoencoder_kl_cogvideox import AutoencoderKLCogVideoX

from layerflow.codec import ClipCodec
from layerflow.layout import LayerLayout
from layerflow.models.configs import model_geometry
from layerflow.testing import PeakTensorBytes

emit = emitter("layerflow")
MODES = ("per_clip", "joint", "joint_tiled")


def setup(mode: str, size: int, frames: int, device: str) -> tuple[ClipCodec, Any, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    vae = (
        AutoencoderKLCogVideoX(
            block_out_channels=(16, 32, 32, 32),
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            latent_channels=16,
            layers_per_block=1,
            norm_num_groups=8,
        )
        .eval()
        .to(device)
    )
    base = LayerLayout.official()
    layout = LayerLayout(base.layers, base.alpha, vae_pass=mode.removesuffix("_tiled"))  # type: ignore[arg-type]
    if mode.endswith("_tiled"):  # half-size tiles every quarter size: a whole number of latents
        vae.enable_tiling(size // 2, size // 2, 0.5, 0.5)
    transformer_config = {"sample_height": size // 8, "sample_width": size // 8}
    geometry = model_geometry(vae.config, transformer_config)
    codec = ClipCodec(layout, geometry, vae)
    frame_geometry = geometry.check(frames, size, size, layout)
    generator = torch.Generator().manual_seed(1)
    pixels = {
        spec.name: torch.rand(1, frames, 4 if spec.transparent else 3, size, size, generator=generator).to(
            device
        )
        for spec in layout.layers
    }
    return codec, frame_geometry, pixels


@torch.no_grad()
def round_trip(
    codec: ClipCodec, frame_geometry: Any, pixels: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    latents = codec.encode(pixels, frame_geometry).sample(
        torch.Generator(device=latents_device(pixels)).manual_seed(0)
    )
    return codec.decode(latents, frame_geometry)


def latents_device(pixels: dict[str, torch.Tensor]) -> str:
    return str(next(iter(pixels.values())).device.type)


def cpu_peak_mib(codec: ClipCodec, frame_geometry: Any, pixels: dict[str, torch.Tensor]) -> float:
    tensors = [*codec.vae.parameters(), *codec.vae.buffers(), *pixels.values()]
    with PeakTensorBytes({t.untyped_storage().data_ptr() for t in tensors}) as tracker:
        round_trip(codec, frame_geometry, pixels)
    return tracker.peak / 2**20


def cuda_peak_mib(codec: ClipCodec, frame_geometry: Any, pixels: dict[str, torch.Tensor]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    round_trip(codec, frame_geometry, pixels)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def times(
    cases: dict[str, tuple[ClipCodec, Any, dict[str, torch.Tensor]]], repeats: int, cuda: bool
) -> dict[str, float]:
    def run(mode: str) -> float:
        clock = time.perf_counter if cuda else time.process_time
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        round_trip(*cases[mode])
        if cuda:
            torch.cuda.synchronize()
        return clock() - start

    for mode in cases:
        run(mode)  # warm-up
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeats):
        for mode in cases:
            best[mode] = min(best[mode], run(mode))
    return best


def main() -> None:
    parser = bench_parser(__doc__)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    size, frames, repeats = (32, 8, 1) if args.quick else (64, 16, 3)
    if cuda and not args.quick:
        size = 256
    where = f"CUDA ({torch.cuda.get_device_name()})" if cuda else "CPU, 1 thread"
    print(f"VAE encode + decode of 4 clips x {frames} frames at {size}x{size}, {where}:")
    cases = {mode: setup(mode, size, frames, device) for mode in MODES}
    seconds = times(cases, repeats, cuda)
    peaks = {mode: (cuda_peak_mib if cuda else cpu_peak_mib)(*cases[mode]) for mode in MODES}
    for mode in MODES:
        emit(
            args.json,
            f"VAE {mode}: encode + decode time ({size}px, 4x{frames} frames)",
            seconds[mode] * 1e3,
            "ms",
        )
        emit(args.json, f"VAE {mode}: encode + decode peak memory above inputs", peaks[mode], "MiB")
    emit(args.json, "VAE joint / per_clip encode + decode time", seconds["joint"] / seconds["per_clip"], "x")
    emit(args.json, "VAE joint / per_clip peak memory", peaks["joint"] / max(peaks["per_clip"], 1e-9), "x")
    emit(
        args.json,
        "VAE joint_tiled / joint peak memory",
        peaks["joint_tiled"] / max(peaks["joint"], 1e-9),
        "x",
    )
    joint, tiled = (round_trip(*cases[mode]) for mode in ("joint", "joint_tiled"))
    change = max((tiled[name] - frames).abs().mean().item() for name, frames in joint.items())
    emit(args.json, "VAE joint_tiled vs joint: decoded mean abs change (random VAE)", change, "")


if __name__ == "__main__":
    main()
