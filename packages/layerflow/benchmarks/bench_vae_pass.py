"""layerflow benchmark: the joint VAE pass (official) against per-clip VAE passes, side by side.

Encode (posterior sample) + decode of every clip of the official RGBA layout (4 clips: foreground,
alpha, background, composite) through the one clip codec, with a small CogVideoX VAE:

* time: CPU time of this single-threaded process, best of ``repeats`` alternating calls;
* peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above the resident models and inputs;
  on CPU the peak of the bytes held by tensors the work creates (every op output is tracked by
  its storage until its last tensor dies; weights and inputs excluded), the CPU stand-in for it.

The joint pass keeps the whole video's activations alive in one call (frame batches cover all
frames), where per-clip passes free each clip's; it is what the official checkpoints were trained on.

Usage: ``python bench_vae_pass.py [--quick] [--json PATH]`` (see ``benchmarks/run_all.py``).
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import torch
from _rows import bench_parser, emitter
from diffusers.models.autoencoders.autoencoder_kl_cogvideox import AutoencoderKLCogVideoX
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from layerflow.codec import ClipCodec
from layerflow.layout import LayerLayout
from layerflow.models.configs import model_geometry

emit = emitter("layerflow")
MODES = ("per_clip", "joint")


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
    layout = LayerLayout(base.layers, base.alpha, vae_pass=mode)  # type: ignore[arg-type]
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
def round_trip(codec: ClipCodec, frame_geometry: Any, pixels: dict[str, torch.Tensor]) -> None:
    latents = codec.encode(pixels, frame_geometry).sample(
        torch.Generator(device=latents_device(pixels)).manual_seed(0)
    )
    codec.decode(latents, frame_geometry)


def latents_device(pixels: dict[str, torch.Tensor]) -> str:
    return str(next(iter(pixels.values())).device.type)


class PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of the storages created by ops run inside the mode (pre-existing ones excluded)."""

    def __init__(self, existing: set[int]):
        super().__init__()
        self.existing = existing
        self.live = 0
        self.peak = 0
        self.refs: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tensors]

    def _release(self, pointer: int) -> None:
        entry = self.refs[pointer]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.refs[pointer]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            if not isinstance(value, torch.Tensor):
                continue
            storage = value.untyped_storage()
            pointer = storage.data_ptr()
            if pointer in self.existing or storage.nbytes() == 0:
                continue
            if pointer not in self.refs:
                self.refs[pointer] = [storage.nbytes(), 0]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self.refs[pointer][1] += 1
            weakref.finalize(value, self._release, pointer)
        return out


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


if __name__ == "__main__":
    main()
