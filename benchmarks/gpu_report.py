"""One GPU report: the tables of issue 13 side by side, measured in one run (at most ~5 minutes).

1. Attention, LayerFlow RGBA shape (B=1, H=30, D=64, N=22,278, bf16), layouts full / condition clip
   isolated / per-layer block-diagonal: TFLOP/s forward and backward of every backend that can run
   (Triton, SDPA or grouped SDPA, xformers, compiled FlexAttention with its compile time reported
   apart), the Triton ratios, and what ``"auto"`` picks and why.
2. Whole transformer, one classifier-free-guidance step (B=2): stock diffusers CogVideoX at the same
   token count, LayerFlow with unmerged motion + content LoRAs per attention backend, LayerFlow
   merged for inference (what the pipeline runs), and the ``latent_offset`` layout (3 clips):
   seconds, ratio to stock, tokens/s, model TFLOP/s and share of the bf16 peak.
3. Training step (B=1, LoRAs on the five trained blocks): seconds and peak memory with and without
   gradient checkpointing.
4. Presets: one whole video of the official ``gen_rgba`` layout (text embeddings given, 50 steps
   with CFG, the joint decode by CogVideoX-2B's VAE) per speed x memory preset
   (``layerflow.presets.Preset``): seconds, ratio to exact/default, peak memory (decode included),
   transformer block rows run, PSNR of the decoded layers against exact/default. The nine videos
   take longer than the shared budget: ``--sections presets --budget 540`` runs them alone.

Weights are random (nothing is downloaded). FLOPs count allowed attention pairs and the per-token
matmuls of the blocks. ``--write-crossovers PATH`` adds this device's measured attention points to
a crossover table (``packages/layer-attention/src/layer_attention/crossovers.json`` stores them in
the package, where ``"auto"`` reads them). Triton kernels use their fixed per-head-dim configs
unless ``--autotune`` (autotuning every kernel does not fit the time budget).

Without CUDA the script stops with an error; ``--dry-run`` runs every section at tiny size on the
CPU (Triton in its interpreter, FlexAttention uncompiled) so the script itself stays tested.

Usage: ``python benchmarks/gpu_report.py [--dry-run] [--json ROWS.jsonl] [--budget 300]
[--write-crossovers TABLE.json] [--autotune] [--sections attention,model,training,presets]``
(also ``nox -s bench_gpu``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = "gpu-report"
#: Datasheet dense bf16 tensor TFLOP/s by device-name fragment (first match wins).
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "GH200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
}
LAYOUT_NAMES = ("full", "condition clip isolated", "per-layer block-diagonal")


# ------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""

    device: str
    dtype_name: str
    heads: int
    head_dim: int
    text_tokens: int  # per prompt
    latent_hw: tuple[int, int]  # latent height, width
    clip_frames: int  # latent frames per clip
    num_layers: int
    text_embed_dim: int
    reps: int
    flex_compiled: bool
    trained_blocks: tuple[int, ...]
    motion_rank: int = 8
    content_rank: int = 256

    @property
    def tokens_per_clip(self) -> int:
        return self.clip_frames * (self.latent_hw[0] // 2) * (self.latent_hw[1] // 2)

    @property
    def dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype_name)


GPU = Sizes(
    device="cuda",
    dtype_name="bfloat16",
    heads=30,
    head_dim=64,
    text_tokens=226,
    latent_hw=(60, 90),
    clip_frames=4,
    num_layers=30,
    text_embed_dim=4096,
    reps=5,
    flex_compiled=True,
    trained_blocks=(5, 11, 17, 23, 29),
)
DRY = Sizes(
    device="cpu",
    dtype_name="float32",
    heads=2,
    head_dim=16,
    text_tokens=6,
    latent_hw=(4, 4),
    clip_frames=2,
    num_layers=2,
    text_embed_dim=16,
    reps=1,
    flex_compiled=False,
    trained_blocks=(1,),
    motion_rank=2,
    content_rank=4,
)


# ------------------------------------------------------------------------------------- output
@dataclass
class Report:
    sink: Path | None
    budget_s: float
    started: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def allow(self, what: str, needs_s: float) -> bool:
        """Whether ``what`` (about ``needs_s`` seconds) still fits the budget; records a skip if not."""
        if self.left() >= needs_s:
            return True
        self.skipped.append(f"{what} (needs ~{needs_s:.0f} s, {max(self.left(), 0):.0f} s left)")
        return False

    def row(self, measure: str, value: float, unit: str, target: str = "") -> None:
        record: dict[str, object] = {"benchmark": BENCH, "measure": measure, "value": value, "unit": unit}
        if target:
            record["target"] = target
        if self.sink is not None:
            with self.sink.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """Print a Markdown table."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


# ------------------------------------------------------------------------------------- timing
def timed(fn: Callable[[], object], reps: int, device: str) -> float:
    """Median seconds of ``fn`` after one warm-up (CUDA events on GPU)."""
    import torch

    fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def first_call_seconds(fn: Callable[[], object], device: str) -> float:
    import torch

    begin = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - begin


@contextmanager
def peak_memory(device: str) -> Iterator[dict[str, float]]:
    """``result["GiB"]``: peak allocated CUDA memory inside the block (NaN on CPU)."""
    import torch

    result = {"GiB": float("nan")}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield result
    if device == "cuda":
        torch.cuda.synchronize()
        result["GiB"] = torch.cuda.max_memory_allocated() / 2**30


# ------------------------------------------------------------------------------------- 1. attention
def attention_layouts(sizes: Sizes) -> dict[str, Any]:
    from layer_attention import SegmentLayout
    from layer_attention.testing import conditional_layout, layerflow_layout

    clip, text = sizes.tokens_per_clip, sizes.text_tokens
    return {
        "full": layerflow_layout(3, 4, clip, text_tokens=text),
        "condition clip isolated": conditional_layout(3, 4, clip, condition_clips=(0,), text_tokens=text),
        "per-layer block-diagonal": SegmentLayout.block_diagonal([3 * text] + [clip] * 4),
    }


def attention_providers(
    sizes: Sizes, layout: Any, q: Any, names: tuple[str, ...]
) -> dict[str, Callable[..., Any]]:
    """Callables ``fn(q, k, v)`` of the backends in ``names`` that can run here ("flex": FlexAttention)."""
    import torch

    from layer_attention import backend_reasons, layer_attention

    providers: dict[str, Callable[..., Any]] = {}
    reasons = backend_reasons(q)
    for name in names:
        if name == "flex":
            try:
                from torch.nn.attention.flex_attention import flex_attention
            except ImportError as error:
                print(f"  flex: not run ({error})")
                continue
            flex_fn = torch.compile(flex_attention) if sizes.flex_compiled else flex_attention
            block_mask = layout.to_block_mask(128, device=q.device)
            providers[name] = functools.partial(flex_fn, block_mask=block_mask)
        elif not reasons[name]:
            providers[name] = lambda q, k, v, name=name: layer_attention(q, k, v, layout, backend=name)
        else:
            print(f"  {name}: not run ({'; '.join(reasons[name])})")
    return providers


def measure_attention(
    fn: Callable[..., Any],
    qkv: tuple[Any, Any, Any],
    grad: Any,
    sizes: Sizes,
    backward: bool,
    first_call: bool,
) -> dict[str, float]:
    """Seconds: ``fwd`` (no grad), ``fwd+bwd``, and for compiled providers the compile share of the first calls."""
    import torch

    plain = tuple(x.detach() for x in qkv)
    result: dict[str, float] = {}

    def forward() -> object:
        with torch.no_grad():
            return fn(*plain)

    def forward_backward() -> object:
        return torch.autograd.grad(fn(*qkv), qkv, grad)

    if first_call:
        result["compile fwd"] = first_call_seconds(forward, sizes.device)
        if backward:
            result["compile bwd"] = first_call_seconds(forward_backward, sizes.device)
    result["fwd"] = timed(forward, sizes.reps, sizes.device)
    if backward:
        result["fwd+bwd"] = timed(forward_backward, sizes.reps, sizes.device)
    if first_call:
        result["compile fwd"] -= result["fwd"]
        if backward:
            result["compile bwd"] -= result["fwd+bwd"]
    return result


TFlops = dict[str, dict[str, dict[str, float]]]  # layout -> backend -> {"fwd", "bwd"}


def measure_layouts(
    report: Report, sizes: Sizes, names: tuple[str, ...], results: TFlops
) -> dict[str, list[str]]:
    """TFLOP/s of the backends ``names`` on every layout into ``results``; returns compile rows (flex)."""
    import torch

    compile_rows: dict[str, list[str]] = {}
    for label, layout in attention_layouts(sizes).items():
        if not report.allow(f"attention {'/'.join(names)} on {label}", 60 if "flex" in names else 20):
            continue
        generator = torch.Generator(device=sizes.device).manual_seed(0)
        shape = (1, sizes.heads, layout.seq_len, sizes.head_dim)
        qkv = tuple(
            torch.randn(shape, device=sizes.device, dtype=sizes.dtype, generator=generator).requires_grad_()
            for _ in range(3)
        )
        grad = torch.randn_like(qkv[0])
        flops = 4 * sizes.head_dim * sizes.heads * layout.allowed_pairs
        for name, fn in attention_providers(sizes, layout, qkv[0], names).items():
            # FlexAttention has no CPU backward: the dry run checks its forward only
            backward = name != "flex" or sizes.device == "cuda"
            try:
                result = measure_attention(fn, qkv, grad, sizes, backward, first_call=name == "flex")
            except Exception as error:  # a backend failing is a result of the report, not its end
                print(f"  {name} on {label}: failed ({type(error).__name__}: {error})")
                continue
            rates = {"fwd": flops / result["fwd"] / 1e12}
            if "fwd+bwd" in result:
                rates["bwd"] = 2.5 * flops / max(result["fwd+bwd"] - result["fwd"], 1e-9) / 1e12
            results.setdefault(label, {})[name] = rates
            for mode, value in rates.items():
                report.row(f"attention {label} {name} {mode}", value, "TFLOP/s")
            if "compile fwd" in result:
                compile_rows[label] = [fmt(result["compile fwd"]), fmt(result.get("compile bwd"))]
                report.row(f"flex compile {label} fwd", result["compile fwd"], "s")
        del qkv, grad
        if sizes.device == "cuda":
            torch.cuda.empty_cache()
    return compile_rows


def triton_ratios(report: Report, label: str, rates: dict[str, dict[str, float]], other: str) -> list[str]:
    """``[fwd, bwd]`` Triton / ``other`` ratio cells (rows written too)."""
    cells = []
    for mode in ("fwd", "bwd"):
        if mode in rates.get("triton", {}) and mode in rates.get(other, {}):
            ratio = rates["triton"][mode] / rates[other][mode]
            report.row(f"attention {label} triton / {other} {mode}", ratio, "x")
            cells.append(fmt(ratio))
        else:
            cells.append("—")
    return cells


def section_attention(report: Report, sizes: Sizes, results: TFlops) -> list[Any]:
    """Table 1 without FlexAttention (its compile comes last); returns crossover points."""
    from layer_attention import AttentionCall, explain_auto
    from layer_attention.crossovers import Point

    backends = ("triton", "sdpa", "xformers")
    measure_layouts(report, sizes, backends, results)
    points: list[Point] = []
    rows, auto_rows = [], []
    for label, layout in attention_layouts(sizes).items():
        rates = results.get(label, {})
        rows.append(
            [label, f"{layout.density:.2f}"]
            + [f"{fmt(rates.get(b, {}).get('fwd'))} / {fmt(rates.get(b, {}).get('bwd'))}" for b in backends]
            + triton_ratios(report, label, rates, "sdpa")
        )
        q = _meta_query(sizes, layout)
        choice = explain_auto(AttentionCall.of(q, layout, needs_grad=True))
        others = " / ".join(
            f"{n}: {'; '.join(choice.reasons[n])}"
            for n in ("triton", "xformers", "sdpa")
            if choice.reasons[n]
        )
        auto_rows.append([label, choice.backend, others or "—"])
        measured = {b: t for b, t in rates.items() if b in backends and "bwd" in t}
        if "sdpa" in measured and len(measured) > 1:
            points.append(
                Point(
                    dtype=sizes.dtype_name,
                    head_dim=sizes.head_dim,
                    seq_len=layout.seq_len,
                    density=layout.density,
                    tflops=measured,
                    label=label,
                )
            )
    table(
        f"Attention TFLOP/s fwd / bwd (allowed pairs; B=1 H={sizes.heads} D={sizes.head_dim} {sizes.dtype_name})",
        ["layout", "density"] + [f"{b} fwd / bwd" for b in backends] + ["triton/sdpa fwd", "triton/sdpa bwd"],
        rows,
    )
    table(
        'What "auto" picks (training call: forward + backward)',
        ["layout", "auto", "why not the others"],
        auto_rows,
    )
    return points


def section_flex(report: Report, sizes: Sizes, results: TFlops) -> None:
    """FlexAttention last: its compile time apart, its TFLOP/s and Triton / Flex."""
    compile_rows = measure_layouts(report, sizes, ("flex",), results)
    rows = []
    for label in attention_layouts(sizes):
        rates = results.get(label, {})
        flex = rates.get("flex", {})
        rows.append(
            [label, *compile_rows.get(label, ["—", "—"]), f"{fmt(flex.get('fwd'))} / {fmt(flex.get('bwd'))}"]
            + triton_ratios(report, label, rates, "flex")
        )
    table(
        f"FlexAttention compile time (first call minus a warm call; compiled: {sizes.flex_compiled}) and TFLOP/s",
        [
            "layout",
            "compile fwd s",
            "compile fwd+bwd s",
            "flex fwd / bwd",
            "triton/flex fwd",
            "triton/flex bwd",
        ],
        rows,
    )


def _meta_query(sizes: Sizes, layout: Any) -> Any:
    """A shape-only query on the report device (what the dispatcher looks at)."""
    import torch

    return torch.empty(1, sizes.heads, layout.seq_len, sizes.head_dim, device=sizes.device, dtype=sizes.dtype)


# ------------------------------------------------------------------------------------- models
def device_peak(sizes: Sizes) -> tuple[str, float | None]:
    import torch

    if sizes.device != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def matmul_tflops(sizes: Sizes) -> float:
    """Achieved bf16 matmul TFLOP/s at 8192^3 (the practical ceiling the model is compared with too)."""
    import torch

    n = 8192 if sizes.device == "cuda" else 256
    a = torch.randn(n, n, device=sizes.device, dtype=sizes.dtype)
    b = torch.randn(n, n, device=sizes.device, dtype=sizes.dtype)
    seconds = timed(lambda: a @ b, max(sizes.reps, 3), sizes.device)
    return 2 * n**3 / seconds / 1e12


def build_models(sizes: Sizes) -> tuple[Any, Any]:
    """Stock CogVideoX and LayerFlow (same shapes, random weights), in the report dtype on the device."""
    import torch
    from diffusers import CogVideoXTransformer3DModel

    from layerflow.models import LayerFlowTransformer3DModel

    frames = 4 * sizes.clip_frames  # 4 clips
    common = {
        "num_attention_heads": sizes.heads,
        "attention_head_dim": sizes.head_dim,
        "num_layers": sizes.num_layers,
        "text_embed_dim": sizes.text_embed_dim,
        "sample_height": sizes.latent_hw[0],
        "sample_width": sizes.latent_hw[1],
        "sample_frames": (frames - 1) * 4 + 1,
    }
    if sizes.device == "cpu":
        common |= {"in_channels": 4, "out_channels": 4, "time_embed_dim": 16}
    torch.manual_seed(0)
    with torch.device(sizes.device):
        # the stock model at the same token count: its one text block holds 3 prompts' worth
        stock = CogVideoXTransformer3DModel(**common, max_text_seq_length=3 * sizes.text_tokens)
        layerflow = LayerFlowTransformer3DModel(**common, max_text_seq_length=sizes.text_tokens)
    return stock.to(sizes.dtype).eval(), layerflow.to(sizes.dtype).eval()


def block_matmul_params(model: Any) -> int:
    """Weights of the per-token matmuls in the blocks (attention projections, feed-forward)."""
    return sum(
        m.weight.numel()
        for name, m in model.transformer_blocks.named_modules()
        if type(m).__name__ == "Linear" and ("attn1" in name or ".ff." in name) and "lora_" not in name
    )


def model_flops(model: Any, sizes: Sizes, tokens: int, batch: int) -> float:
    attention = 4 * tokens**2 * sizes.head_dim * sizes.heads * sizes.num_layers
    return batch * (2 * block_matmul_params(model) * tokens + attention)


def model_inputs(sizes: Sizes, model: Any, clips: int, batch: int) -> tuple[Any, Any, Any]:
    import torch

    generator = torch.Generator(device=sizes.device).manual_seed(1)
    channels = model.config["in_channels"]
    video = torch.randn(
        batch, clips * sizes.clip_frames, channels, *sizes.latent_hw, device=sizes.device, generator=generator
    ).to(sizes.dtype)
    text = torch.randn(
        batch, 3 * sizes.text_tokens, sizes.text_embed_dim, device=sizes.device, generator=generator
    ).to(sizes.dtype)
    return video, text, torch.tensor([500] * batch, device=sizes.device)


def add_lora(model: Any, sizes: Sizes, trainable: bool) -> None:
    """Motion + content LoRAs on the trained blocks, random (non-zero) up-projections, inference gates."""
    import torch

    import multi_lora as ml
    from layerflow.models.adapters import add_layerflow_adapters

    add_layerflow_adapters(
        model, motion_rank=sizes.motion_rank, content_rank=sizes.content_rank, layers=sizes.trained_blocks
    )
    for name in ml.list_adapters(model):
        for layer in ml.adapter_layers(model, name).values():
            torch.nn.init.normal_(layer.lora_pair(name)[1].weight, std=0.01)
    if not trainable:
        ml.set_trainable(model, "content", False)


def section_model(report: Report, sizes: Sizes, stock: Any, layerflow: Any) -> None:
    """Table 2: one CFG step (B=2) per variant."""
    import torch

    from layer_attention import SegmentLayout
    from layerflow.models.adapters import merged_for_inference
    from layerflow.models.attention import install_layer_attention

    device_name, peak = device_peak(sizes)
    achieved = matmul_tflops(sizes)
    report.row("bf16 matmul 8192^3", achieved, "TFLOP/s")
    rows = []
    stock_s: float | None = None
    batch = 2

    def measure(label: str, model: Any, clips: int, kwargs: dict[str, Any] | None, merged: bool) -> None:
        nonlocal stock_s
        if not report.allow(f"model step {label}", 15):
            return
        video, text, t = model_inputs(sizes, model, clips, batch)
        tokens = text.shape[1] + clips * sizes.clip_frames * (sizes.latent_hw[0] // 2) * (
            sizes.latent_hw[1] // 2
        )
        extra = {} if model is stock else {"num_clips": clips, "attention_kwargs": kwargs}

        def step() -> object:
            return model(video, text, t, return_dict=False, **extra)[0]

        with torch.no_grad():
            if merged:
                with merged_for_inference(model):
                    seconds = timed(step, sizes.reps, sizes.device)
            else:
                seconds = timed(step, sizes.reps, sizes.device)
        stock_s = seconds if model is stock else stock_s
        rate = model_flops(model, sizes, tokens, batch) / seconds / 1e12
        rows.append(
            [
                label,
                f"{tokens:,}",
                f"{seconds:.3f}",
                fmt(seconds / stock_s if stock_s else None),
                f"{batch * tokens / seconds:,.0f}",
                fmt(rate),
                fmt(100 * rate / peak if peak else None),
                f"{100 * rate / achieved:.0f}",
            ]
        )
        report.row(f"model CFG step {label}", seconds, "s")
        if stock_s and model is not stock:
            report.row(
                f"model CFG step {label} / stock", seconds / stock_s, "x", "<= 1" if "auto" in label else ""
            )

    measure("stock diffusers CogVideoX", stock, 4, None, merged=False)
    stock.to("cpu")  # frees the device memory for the LayerFlow variants
    add_lora(layerflow, sizes, trainable=False)
    lengths4 = [sizes.text_tokens] * 3 + [sizes.tokens_per_clip] * 4
    lengths3 = [sizes.text_tokens] * 3 + [sizes.tokens_per_clip] * 3
    full4 = {"layout": SegmentLayout.cached(lengths4)}
    for backend in ("sdpa", "triton", "auto"):
        install_layer_attention(layerflow, backend)
        try:
            measure(f"LayerFlow {backend}, LoRAs unmerged", layerflow, 4, full4, merged=False)
        except Exception as error:
            print(f"  LayerFlow {backend}: failed ({type(error).__name__}: {error})")
    install_layer_attention(layerflow, "auto")
    measure("LayerFlow auto, LoRA merged (pipeline)", layerflow, 4, full4, merged=True)
    measure(
        "LayerFlow auto, merged, latent_offset (3 clips)",
        layerflow,
        3,
        {"layout": SegmentLayout.cached(lengths3)},
        merged=True,
    )
    table(
        f"Whole transformer, one CFG step (B={batch}) on {device_name}",
        ["variant", "tokens", "s", "/ stock", "tokens/s", "TFLOP/s", "% datasheet peak", "% matmul 8192^3"],
        rows,
    )
    print(f"\nbf16 peak: datasheet {fmt(peak)} TFLOP/s, measured matmul {fmt(achieved)} TFLOP/s")


def section_training(report: Report, sizes: Sizes, layerflow: Any) -> None:
    """Table 3: one training step (B=1, trainable content LoRA) with and without checkpointing."""
    import torch

    import multi_lora as ml

    ml.set_trainable(layerflow, "content", True)
    params = list(ml.trainable_parameters(layerflow).values())
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    video, text, t = model_inputs(sizes, layerflow, 4, 1)
    layerflow.train()
    rows = []
    for checkpointing in (True, False):
        if not report.allow(f"training step checkpointing={checkpointing}", 20):
            continue
        if checkpointing:
            layerflow.enable_gradient_checkpointing()
        else:
            layerflow.disable_gradient_checkpointing()

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            out = layerflow(video, text, t, num_clips=4, return_dict=False)[0]
            out.float().square().mean().backward()
            optimizer.step()

        try:
            with peak_memory(sizes.device) as memory:
                seconds = timed(step, sizes.reps, sizes.device)
        except torch.OutOfMemoryError:
            rows.append([str(checkpointing), "out of memory", "—"])
            continue
        rows.append([str(checkpointing), f"{seconds:.3f}", fmt(memory["GiB"])])
        report.row(f"training step checkpointing={checkpointing}", seconds, "s")
        report.row(f"training peak memory checkpointing={checkpointing}", memory["GiB"], "GiB")
    layerflow.eval()
    table("Training step (B=1, LoRAs on the trained blocks, AdamW)", ["checkpointing", "s", "peak GiB"], rows)


# ------------------------------------------------------------------------------------- 4. presets
def preset_runs() -> list[tuple[str, str]]:
    """Every speed x memory preset, memory modes in the order a pipeline can switch them (group
    offload, ``"low"``, cannot be undone, so it comes last)."""
    from layerflow.presets import MEMORIES, SPEEDS

    return [(speed, memory) for memory in MEMORIES for speed in SPEEDS]


def preset_vae(sizes: Sizes, channels: int) -> Any:
    """CogVideoX-2B's VAE (random weights) on the GPU; a tiny one of the same compression for the dry run."""
    from diffusers.models.autoencoders.autoencoder_kl_cogvideox import AutoencoderKLCogVideoX

    if sizes.device == "cuda":
        return AutoencoderKLCogVideoX(latent_channels=channels).to(sizes.dtype).eval()
    return (
        AutoencoderKLCogVideoX(  # 8x spatial, 4x temporal like CogVideoX's
            block_out_channels=(8,) * 4,
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            latent_channels=channels,
            layers_per_block=1,
            norm_num_groups=4,
        )
        .to(sizes.dtype)
        .eval()
    )


def psnr(got: dict[str, Any], want: dict[str, Any]) -> float:
    """PSNR (dB) of decoded layers against the exact run's, pooled over layers (frames in [0, 1])."""
    import math

    squared = sum(float((got[k].float() - want[k].float()).square().sum()) for k in want)
    count = sum(want[k].numel() for k in want)
    return math.inf if squared == 0 else 10 * math.log10(count / squared)


def section_presets(report: Report, sizes: Sizes, layerflow: Any, steps: int) -> None:
    """Table 4: one whole video (text given, ``steps`` steps with CFG, joint VAE decode of the official
    ``gen_rgba`` layout) per speed x memory preset: seconds, peak memory, blocks run, change vs exact."""
    import torch

    from layerflow.pipelines import LayerFlowPipeline
    from layerflow.pipelines.acceleration import count_block_calls
    from layerflow.pipelines.scheduling import make_scheduler
    from layerflow.presets import Preset
    from layerflow.variants import official_variant

    layout = official_variant("gen_rgba").layout
    vae = preset_vae(sizes, layerflow.config["in_channels"])
    pipe = LayerFlowPipeline(
        None, None, vae, layerflow.eval(), make_scheduler("dpm"), layout=layout.to_dict()
    )
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    prompts = len(layout.for_task("generate").prompt_layers)
    embeds = torch.randn(1, prompts * sizes.text_tokens, sizes.text_embed_dim, generator=generator)
    embeds = embeds.to(sizes.dtype)
    geometry = {
        "num_frames": 4 * sizes.clip_frames,  # clip_frames latent frames per clip
        "height": 8 * sizes.latent_hw[0],
        "width": 8 * sizes.latent_hw[1],
    }

    def call(num_inference_steps: int) -> Any:
        return pipe(
            prompt_embeds=embeds,
            **geometry,
            num_inference_steps=num_inference_steps,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        )

    rows = []
    exact: Any = None
    baseline: float | None = None
    needs_s = 120.0  # a first guess; then 1.5x the slowest run so far
    for speed, memory in preset_runs():
        name = f"preset {speed}/{memory}"
        if not report.allow(name, needs_s):
            continue
        pipe.enable_preset(Preset(speed, memory), sizes.device)  # type: ignore[arg-type]
        if exact is None:
            with torch.no_grad():
                call(2)  # warm-up: kernels, allocator, autotuners
        try:
            with (
                torch.no_grad(),
                count_block_calls(pipe.transformer) as calls,
                peak_memory(sizes.device) as used,
            ):
                begin = time.perf_counter()
                out = call(steps)
                if sizes.device == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - begin
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append([speed, memory, "out of memory", "—", "—", "—", "—"])
            report.row(f"{name}: out of memory", 1.0, "flag")
            continue
        layers = {k: v.cpu() for k, v in out.layers.items()}
        exact = layers if exact is None else exact
        baseline = seconds if baseline is None else baseline
        needs_s = max(needs_s if baseline != seconds else 0.0, 1.5 * seconds)
        per_call = 2 * 2 * len(pipe.transformer.transformer_blocks) * steps  # CFG rows x (attn, ff)
        change = psnr(layers, exact)
        rows.append(
            [
                speed,
                memory,
                f"{seconds:.2f}",
                fmt(seconds / baseline),
                fmt(used["GiB"]),
                fmt(calls.run / per_call),
                "exact" if change == float("inf") else f"{change:.1f}" if change < 100 else "> 100",
            ]
        )
        report.row(f"{name}: video of {steps} steps with VAE decode", seconds, "s")
        report.row(f"{name}: / exact default", seconds / baseline, "x")
        report.row(f"{name}: peak memory", used["GiB"], "GiB")
        report.row(f"{name}: block rows run / all", calls.run / per_call, "x")
        report.row(f"{name}: PSNR of the decoded layers vs exact default", change, "dB")
    table(
        f"Presets: one gen_rgba video ({steps} steps, CFG, joint VAE decode; random weights, so the "
        "PSNR shows how far a preset moves the output, not its quality)",
        ["speed", "memory", "s", "/ exact default", "peak GiB", "block rows run", "PSNR vs exact (dB)"],
        rows,
    )


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (checks the script)")
    parser.add_argument("--json", type=Path, default=None, help="append one JSON row per figure here")
    parser.add_argument(
        "--budget", type=float, default=270.0, help="seconds; later measurements are skipped past it"
    )
    parser.add_argument(
        "--write-crossovers", type=Path, default=None, help="add the measured points to this table"
    )
    parser.add_argument("--autotune", action="store_true", help="autotune the Triton kernels (slow)")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compile can be slow)")
    parser.add_argument(
        "--sections",
        default="attention,model,training,presets",
        help="comma-separated: attention, model, training, presets",
    )
    args = parser.parse_args(argv)
    if not args.autotune:
        os.environ.setdefault("LAYER_ATTENTION_AUTOTUNE", "0")  # read when the kernels are imported

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            f"error: gpu_report needs a CUDA device, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "install a CUDA build of torch (see README) or pass --dry-run for the CPU smoke run",
            file=sys.stderr,
        )
        return 2
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        torch.set_num_threads(1)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # random-weight models in the report dtype: no casting advice
    sizes = DRY if args.dry_run else GPU
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - {"attention", "model", "training", "presets"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    report = Report(args.json, args.budget)
    where = "CPU dry run" if args.dry_run else torch.cuda.get_device_name()
    print(f"# GPU report ({where}; torch {torch.__version__}; budget {args.budget:.0f} s)")

    attention: TFlops = {}
    if "attention" in sections:
        points = section_attention(report, sizes, attention)
        if args.write_crossovers is not None:
            write_crossovers(args.write_crossovers, points, sizes)
    if sections & {"model", "training", "presets"} and report.allow("model construction", 30):
        stock, layerflow = build_models(sizes)
        if "model" in sections:
            section_model(report, sizes, stock, layerflow)
        else:
            add_lora(layerflow, sizes, trainable=True)
        del stock
        if "training" in sections:
            section_training(report, sizes, layerflow)
        if "presets" in sections:
            section_presets(report, sizes, layerflow, steps=2 if args.dry_run else 50)
    if "attention" in sections and not args.no_flex:
        section_flex(report, sizes, attention)  # last: its compile time is the least predictable
    elapsed = time.perf_counter() - report.started
    print(
        f"\nfinished in {elapsed:.0f} s"
        + (f"; skipped: {'; '.join(report.skipped)}" if report.skipped else "")
    )
    return 0


def write_crossovers(path: Path, points: list[Any], sizes: Sizes) -> None:
    """Merge this device's measured points into the crossover table at ``path``."""
    import torch

    from layer_attention.crossovers import CrossoverTable, measured_entry

    if not points:
        print(f"no crossover points measured; {path} left as it was")
        return
    if sizes.device == "cuda":
        name, capability = torch.cuda.get_device_name(), torch.cuda.get_device_capability()
    else:
        name, capability = "cpu (dry run)", None
    table_now = CrossoverTable.read(path) if path.exists() else CrossoverTable()
    source = f"gpu_report.py on {name}: torch {torch.__version__}, B=1 H={sizes.heads} D={sizes.head_dim}"
    table_now.with_entry(measured_entry(name, capability, points, source)).write(path)
    print(f"wrote {len(points)} crossover points for {name} to {path}")


if __name__ == "__main__":
    sys.exit(main())
