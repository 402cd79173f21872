"""``"auto"`` follows measured crossovers: SDPA unless another backend was measured faster here.

The calls are built by hand (device name, capability, dtype, N, layout), so the decision logic is
checked on CPU for devices this machine does not have.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from layer_attention import (
    AttentionCall,
    CrossoverTable,
    SegmentLayout,
    backend_reasons,
    conditional_layout,
    explain_auto,
    layerflow_layout,
    packaged_table,
    select_backend,
)
from layer_attention.crossovers import MIN_SPEEDUP, DeviceEntry, Point

CLIP = 5400
FULL = layerflow_layout(3, 4, CLIP)  # N = 22,278: the RGBA shape
CONDITION = conditional_layout(3, 4, CLIP, condition_clips=(0,))
PER_LAYER = SegmentLayout.block_diagonal([3 * 226] + [CLIP] * 4)


def _call(layout: SegmentLayout, *, dtype=torch.float16, name="NVIDIA H200", capability=(9, 0), grad=False):
    return AttentionCall(
        device_type="cuda",
        dtype=dtype,
        head_dim=64,
        seq_len=layout.seq_len,
        layout_key=None if layout.is_full else layout.key,
        needs_grad=grad,
        device_name=name,
        capability=capability,
    )


def _table(speedups: dict[float, tuple[float, float]], dtype: str = "float16") -> CrossoverTable:
    """A one-device table: at each density, triton = sdpa x (fwd speedup, bwd speedup)."""
    points = tuple(
        Point(
            dtype=dtype,
            head_dim=64,
            seq_len=FULL.seq_len,
            density=density,
            tflops={"sdpa": {"fwd": 400.0, "bwd": 400.0}, "triton": {"fwd": 400.0 * fwd, "bwd": 400.0 * bwd}},
        )
        for density, (fwd, bwd) in speedups.items()
    )
    return CrossoverTable({"NVIDIA H200": DeviceEntry("NVIDIA H200", (9, 0), points)})


CROSSING = _table({0.236: (2.0, 1.6), 0.824: (1.1, 1.0), 1.0: (0.85, 0.7)})


def test_the_seeded_h200_table_never_prefers_triton():
    """Issue 13's H200 figures: Triton is slower than SDPA at every measured density, fwd and fwd+bwd."""
    table = packaged_table()
    entry = table.devices["NVIDIA H200"]
    assert entry.capability == (9, 0) and len(entry.points) == 3
    for density in (0.1, 0.236, 0.5, 0.824, 1.0):
        for mode in ("fwd", "fwd+bwd"):
            estimate = table.estimate(
                "triton",
                device_name="NVIDIA H200",
                capability=(9, 0),
                dtype=torch.bfloat16,
                head_dim=64,
                seq_len=22278,
                density=density,
                mode=mode,
            )
            assert not isinstance(estimate, str) and estimate.speedup < 1.0, (density, mode, estimate)
    full = table.estimate(
        "triton",
        device_name="NVIDIA H200",
        capability=(9, 0),
        dtype=torch.bfloat16,
        head_dim=64,
        seq_len=22278,
        density=1.0,
        mode="fwd",
    )
    assert not isinstance(full, str) and full.speedup == pytest.approx(352 / 413)  # the 0.85x


@pytest.mark.parametrize("layout", [FULL, CONDITION, PER_LAYER], ids=["full", "condition", "per-layer"])
@pytest.mark.parametrize("grad", [False, True], ids=["fwd", "fwd+bwd"])
def test_measured_slower_means_sdpa_with_the_figures_as_reason(layout, grad):
    table = _table({0.236: (0.48, 0.61), 0.824: (0.77, 0.70), 1.0: (0.85, 0.70)})
    choice = explain_auto(_call(layout, grad=grad), table)
    assert choice.backend == "sdpa" and choice.reasons["sdpa"] == []
    (why,) = [r for r in choice.reasons["triton"] if "measured" in r]
    assert why.startswith(f"not measured faster than sdpa (needs >= {MIN_SPEEDUP:g}x)")
    assert ("fwd+bwd" if grad else "fwd") in why and "measured on NVIDIA H200" in why


def test_crossover_picks_triton_only_on_sparse_layouts():
    per_layer = explain_auto(_call(PER_LAYER), CROSSING)
    assert per_layer.backend == "triton"
    assert per_layer.reasons["sdpa"] == [
        "triton is measured faster: 2.00x sdpa fwd at density 0.24, N=22278, float16, D=64 (measured on NVIDIA H200)"
    ]
    assert explain_auto(_call(FULL), CROSSING).backend == "sdpa"
    # between 0.236 (2x) and 0.824 (1.1x) the log speedup is interpolated; 1.0 (0.85x) loses
    assert explain_auto(_call(CONDITION), CROSSING).backend == "triton"
    middle = SegmentLayout([226, 226, 226, 5400, 5400, 5400, 5400], _allowed_with_density(0.53))
    chosen = explain_auto(_call(middle), CROSSING)
    weight = (middle.density - 0.236) / (0.824 - 0.236)
    assert 0.2 < weight < 0.8
    expected = math.exp((1 - weight) * math.log(2.0) + weight * math.log(1.1))
    assert chosen.backend == "triton"
    assert f"{expected:.2f}x sdpa fwd interpolated between 2.00x" in chosen.reasons["sdpa"][0]


def test_backward_figures_decide_when_a_backward_follows():
    table = _table({1.0: (1.2, 0.5)})  # faster forward, much slower backward
    assert explain_auto(_call(FULL, grad=False), table).backend == "triton"
    assert explain_auto(_call(FULL, grad=True), table).backend == "sdpa"


def test_unmeasured_devices_dtypes_and_lengths_stay_on_sdpa():
    a100 = explain_auto(_call(PER_LAYER, name="NVIDIA A100-SXM4-80GB", capability=(8, 0)), CROSSING)
    assert a100.backend == "sdpa"
    assert any("no measurements for NVIDIA A100-SXM4-80GB" in r for r in a100.reasons["triton"])
    h100 = explain_auto(_call(PER_LAYER, name="NVIDIA H100 80GB HBM3", capability=(9, 0)), CROSSING)
    assert h100.backend == "triton"  # same capability: the H200's figures stand in, and say so
    assert "measured on NVIDIA H200 (same compute capability 9.0)" in h100.reasons["sdpa"][0]
    fp32 = explain_auto(_call(PER_LAYER, dtype=torch.float32), CROSSING)
    assert fp32.backend == "sdpa" and any(
        "no fwd measurements of triton" in r for r in fp32.reasons["triton"]
    )
    short = SegmentLayout.block_diagonal([100, 200, 300])
    assert explain_auto(_call(short), CROSSING).backend == "sdpa"
    assert any("more than 4x from N=600" in r for r in explain_auto(_call(short), CROSSING).reasons["triton"])


def _allowed_with_density(target: float) -> torch.Tensor:
    """A 7-segment table whose density is close to ``target`` (greedy over clip pairs)."""
    lengths = [226, 226, 226, 5400, 5400, 5400, 5400]
    allowed = torch.eye(7, dtype=torch.bool)
    allowed[:, :3] = True
    total = sum(lengths) ** 2
    for i, j in ((i, j) for i in range(3, 7) for j in range(3, 7) if i != j):
        layout = SegmentLayout(lengths, allowed)
        if layout.allowed_pairs / total >= target:
            break
        allowed[i, j] = True
    return allowed


def test_table_round_trip_env_override_and_bad_files(tmp_path, monkeypatch):
    assert CrossoverTable.from_dict(CROSSING.to_dict()) == CROSSING
    extra = tmp_path / "mine.json"
    mine = _table({1.0: (1.5, 1.5)}, dtype="bfloat16")
    renamed = DeviceEntry("NVIDIA GH200 480GB", (9, 0), mine.devices["NVIDIA H200"].points, "local run")
    CrossoverTable({renamed.name: renamed}).write(extra)
    monkeypatch.setenv("LAYER_ATTENTION_CROSSOVERS", str(extra))
    packaged_table.cache_clear()
    try:
        table = packaged_table()
        assert set(table.devices) == {"NVIDIA H200", "NVIDIA GH200 480GB"}
        assert table.devices["NVIDIA GH200 480GB"].source == "local run"
    finally:
        monkeypatch.delenv("LAYER_ATTENTION_CROSSOVERS")
        packaged_table.cache_clear()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": 1, "devices": [{"name": "x", "points": [{"dtype": "float16"}]}]}))
    with pytest.raises(ValueError, match=r"bad.json: device entry 0 is malformed \(KeyError\('head_dim'\)\)"):
        CrossoverTable.read(bad)
    with pytest.raises(ValueError, match="crossover table format 2, expected 1"):
        CrossoverTable.from_dict({"format": 2})


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU dispatch")
def test_cpu_calls_explain_the_auto_choice():
    q = torch.zeros(1, 2, PER_LAYER.seq_len // 100, 64)
    layout = SegmentLayout.block_diagonal([q.shape[2] - 10, 10])
    assert select_backend(q, layout=layout) == "sdpa"
    reasons = backend_reasons(q, layout, auto=True)
    assert reasons["sdpa"] == []
    assert "auto picks it only for ['cuda'] tensors (got cpu)" in reasons["triton"]
    assert backend_reasons(q)["sdpa"] == []  # by-name reasons are unchanged
