"""multi-lora vs a plain Linear and vs peft, side by side in one process (CPU by default).

Cases (CogVideoX-like shapes scaled down: tokens x width, ranks 8 = motion and 256 = content):

* base ``nn.Linear``, and an identical copy of it: their ratio is the measurement's noise floor;
* multi-lora with the motion LoRA gated off (scalar 0.0: branch skipped) -> overhead over base;
* peft with the same motion LoRA at scale 0 (peft still computes the branch) -> overhead over base;
* motion + content on: multi-lora vs peft (same weights);
* per-sample motion gates vs the scalar gate path (multi-lora);
* gate toggle time on a 30-block tiny CogVideoX: ``multi_lora.set_scale`` vs diffusers
  ``set_adapters`` (peft ``set_adapter`` + ``set_scale`` underneath) and peft's ``set_adapter`` on
  every LoRA layer.

Timings are the best CPU time of several repeats (one thread by default); the cases of one repeat run back to back (round robin) so that load
from other processes hits them alike. Follows ``benchmarks/run_all.py``'s convention: ``--json PATH``
appends one row per figure, ``--quick`` shrinks sizes.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import multi_lora as ml

MOTION_RANK, CONTENT_RANK = 8, 256


def _best_times(cases: dict[str, Callable[[], object]], repeats: int, inner: int) -> dict[str, float]:
    """Fastest CPU seconds per call of each case over ``repeats``; cases interleave within a repeat.

    Process CPU time, not wall time, and the minimum, not the median: on a shared machine other
    processes add waiting, which wall time counts and CPU time does not, and they only ever add, so
    the fastest repeat is the best estimate of the cost itself (as ``timeit`` advises). With one
    intra-op thread (the default here) CPU time has no OpenMP spin-waiting in it either.
    """
    for run in cases.values():  # warm-up
        run()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for repeat in range(repeats):
        shift = repeat % len(names)  # rotate the order so no case always follows the same one
        for name in names[shift:] + names[:shift]:
            run = cases[name]
            start = time.process_time()
            for _ in range(inner):
                run()
            samples[name].append((time.process_time() - start) / inner)
    return {name: min(values) for name, values in samples.items()}


def _randomize(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)


def _peft_model(base: nn.Module, source: nn.Module, adapters: dict[str, int]) -> nn.Module:
    import peft

    model = copy.deepcopy(base)
    for name, rank in adapters.items():
        model = peft.inject_adapter_in_model(
            peft.LoraConfig(r=rank, lora_alpha=1.0, target_modules=["proj"]), model, adapter_name=name
        )
    state = {k: v for k, v in source.state_dict().items() if ".lora_" in k}
    model.load_state_dict(state, strict=False)
    for module in model.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.set_adapter(list(adapters))
    return model.eval()


def layer_cases(tokens: int, width: int, repeats: int) -> tuple[dict[str, float], list[str]]:
    torch.manual_seed(0)
    base = nn.ModuleDict({"proj": nn.Linear(width, width)}).eval()
    x = torch.randn(2, tokens // 2, width)

    def forward(model: nn.Module) -> Callable[[], object]:
        return lambda: model["proj"](x)

    motion_only = copy.deepcopy(base)
    ml.add_adapter(motion_only, "motion", rank=MOTION_RANK, alpha=1.0, target_modules=["proj"])
    _randomize(motion_only)
    ml.set_scale(motion_only, "motion", 0.0)

    both = copy.deepcopy(base)
    ml.add_adapter(both, "motion", rank=MOTION_RANK, alpha=1.0, target_modules=["proj"])
    ml.add_adapter(both, "content", rank=CONTENT_RANK, alpha=1.0, target_modules=["proj"])
    _randomize(both)
    per_sample = copy.deepcopy(both)
    ml.set_scale(per_sample, "motion", torch.tensor([1.0, 0.0]))

    cases: dict[str, Callable[[], object]] = {
        "base Linear": forward(base),
        "base Linear (a copy, for the noise floor)": forward(copy.deepcopy(base)),
        "multi-lora motion gated off": forward(motion_only),
        "multi-lora both on (scalar gates)": forward(both),
        "multi-lora both on (per-sample motion gate)": forward(per_sample),
    }
    skipped: list[str] = []
    try:
        peft_motion = _peft_model(base, motion_only, {"motion": MOTION_RANK})
        for module in peft_motion.modules():
            if hasattr(module, "set_scale") and hasattr(module, "lora_A"):
                module.set_scale("motion", 0.0)
        peft_both = _peft_model(base, both, {"motion": MOTION_RANK, "content": CONTENT_RANK})
        with torch.no_grad():
            torch.testing.assert_close(peft_both["proj"](x), both["proj"](x), rtol=1e-4, atol=1e-4)
        cases["peft motion at scale 0"] = forward(peft_motion)
        cases["peft both on"] = forward(peft_both)
    except ImportError:
        skipped.append("peft cases (peft not installed)")
    with torch.no_grad():
        return _best_times(cases, repeats, inner=1), skipped


def toggle_cases(num_layers: int, repeats: int) -> tuple[dict[str, float], list[str]]:
    """Seconds per gate change on a tiny CogVideoX with ``num_layers`` blocks (4 projections each)."""
    try:
        import diffusers
        import peft
    except ImportError:
        return {}, ["toggle cases (diffusers/peft not installed)"]

    def tiny() -> nn.Module:
        torch.manual_seed(0)
        return diffusers.CogVideoXTransformer3DModel(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            time_embed_dim=16,
            text_embed_dim=16,
            num_layers=num_layers,
            sample_width=8,
            sample_height=8,
            sample_frames=5,
            max_text_seq_length=8,
        )

    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    ours = tiny()
    ml.add_adapter(ours, "motion", rank=MOTION_RANK, alpha=1.0, target_modules=targets)
    ml.add_adapter(ours, "content", rank=16, alpha=1.0, target_modules=targets)
    theirs = tiny()
    theirs.add_adapter(peft.LoraConfig(r=MOTION_RANK, lora_alpha=1.0, target_modules=targets), "motion")
    theirs.add_adapter(peft.LoraConfig(r=16, lora_alpha=1.0, target_modules=targets), "content")
    state = {"value": 0}
    gates = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]

    def ours_scalar() -> None:
        state["value"] ^= 1
        ml.set_scale(ours, "motion", float(state["value"]))

    def ours_per_sample() -> None:
        state["value"] ^= 1
        ml.set_scale(ours, "motion", gates[state["value"]])

    def theirs_set_adapters() -> None:
        state["value"] ^= 1
        theirs.set_adapters(["motion", "content"], [float(state["value"]), 1.0])

    def theirs_set_adapter() -> None:  # peft's on/off switch: activate one adapter or both
        state["value"] ^= 1
        for module in theirs.modules():
            if isinstance(module, peft.tuners.lora.LoraLayer):
                module.set_adapter(["motion", "content"] if state["value"] else ["content"])

    cases = {
        "multi-lora set_scale (scalar)": ours_scalar,
        "multi-lora set_scale (per-sample)": ours_per_sample,
        "diffusers set_adapters": theirs_set_adapters,
        "peft set_adapter (all LoRA layers)": theirs_set_adapter,
    }
    return _best_times(cases, repeats, inner=20), []


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, default=None, help="append one JSON row per figure here")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for smoke runs")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (CPU time is measured)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokens, width, repeats = (1024, 640, 9) if args.quick else (4096, 1920, 15)
    print(
        f"multi-lora benchmark: tokens={tokens} width={width} ranks={MOTION_RANK}/{CONTENT_RANK} "
        f"threads={torch.get_num_threads()} repeats={repeats}"
    )
    times, skipped = layer_cases(tokens, width, repeats)
    toggles, toggle_skipped = toggle_cases(num_layers=8 if args.quick else 30, repeats=repeats)
    skipped += toggle_skipped
    for name, seconds in times.items():
        print(f"  {name:<48} {seconds * 1e3:10.3f} ms")
    for name, seconds in toggles.items():
        print(f"  {name:<48} {seconds * 1e6:10.1f} us per toggle")

    rows: list[dict[str, object]] = []

    def ratio(measure: str, numerator: str, denominator: str, target: str, source: dict[str, float]) -> None:
        if numerator in source and denominator in source:
            rows.append(
                {
                    "benchmark": "multi-lora",
                    "measure": measure,
                    "value": source[numerator] / source[denominator],
                    "unit": "x",
                    "target": target,
                }
            )

    ratio(
        "noise floor: base copy / base Linear",
        "base Linear (a copy, for the noise floor)",
        "base Linear",
        "~ 1.0",
        times,
    )
    ratio("motion gated off / base Linear", "multi-lora motion gated off", "base Linear", "<= 1.02", times)
    ratio("peft motion scale 0 / base Linear", "peft motion at scale 0", "base Linear", "", times)
    ratio("both on: multi-lora / peft", "multi-lora both on (scalar gates)", "peft both on", "<= 1.0", times)
    ratio(
        "per-sample gates / scalar gates",
        "multi-lora both on (per-sample motion gate)",
        "multi-lora both on (scalar gates)",
        "<= 1.1",
        times,
    )
    ratio(
        "toggle: set_scale / diffusers set_adapters",
        "multi-lora set_scale (scalar)",
        "diffusers set_adapters",
        "",
        toggles,
    )
    ratio(
        "toggle: set_scale / peft set_adapter",
        "multi-lora set_scale (scalar)",
        "peft set_adapter (all LoRA layers)",
        "",
        toggles,
    )
    for name in toggles:
        rows.append(
            {
                "benchmark": "multi-lora",
                "measure": f"toggle time: {name}",
                "value": toggles[name] * 1e6,
                "unit": "us",
            }
        )
    print()
    for row in rows:
        print(f"  {row['measure']:<48} {row['value']:10.3f} {row['unit']:<3} {row.get('target', '')}")
    for reason in skipped:
        print(f"  skipped: {reason}")
    if args.json is not None:
        with args.json.open("a") as sink:
            for row in rows:
                sink.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
