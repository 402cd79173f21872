"""``benchmarks/gpu_report.py``: refuses to run without CUDA, and its CPU dry run covers every table.

Journey test: a fresh interpreter runs the script as a user would; the dry run measures every
section at tiny size (Triton in its interpreter), writes JSON rows and a crossover table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_report.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_without_cuda_it_fails_clearly():
    result = _run()
    assert result.returncode == 2
    assert "error: gpu_report needs a CUDA device, but torch.cuda.is_available() is False" in result.stderr
    assert "--dry-run" in result.stderr
    assert result.stdout == ""


@pytest.mark.slow
def test_dry_run_measures_every_section(tmp_path):
    rows_path, table_path = tmp_path / "rows.jsonl", tmp_path / "crossovers.json"
    result = _run("--dry-run", "--json", str(rows_path), "--write-crossovers", str(table_path))
    assert result.returncode == 0, result.stderr[-3000:]
    for title in (
        "### Attention TFLOP/s fwd / bwd",
        "### FlexAttention compile time",
        '### What "auto" picks',
        "### Whole transformer, one CFG step (B=2)",
        "### Training step (B=1",
    ):
        assert title in result.stdout
    measures = {json.loads(line)["measure"] for line in rows_path.read_text().splitlines()}
    for layout in ("full", "condition clip isolated", "per-layer block-diagonal"):
        for backend in ("triton", "sdpa"):
            assert f"attention {layout} {backend} fwd" in measures
            assert f"attention {layout} {backend} bwd" in measures
        assert f"attention {layout} triton / sdpa fwd" in measures
        assert f"attention {layout} flex fwd" in measures
    for variant in (
        "stock diffusers CogVideoX",
        "LayerFlow sdpa, LoRAs unmerged",
        "LayerFlow triton, LoRAs unmerged",
        "LayerFlow auto, LoRA merged (pipeline)",
        "LayerFlow auto, merged, latent_offset (3 clips)",
    ):
        assert f"model CFG step {variant}" in measures
    assert {"training step checkpointing=True", "training step checkpointing=False"} <= measures
    assert "### Presets: one gen_rgba video (2 steps" in result.stdout
    for speed in ("exact", "fast", "fastest"):
        for memory in ("default", "offload", "low"):
            for figure in (
                "video of 2 steps with VAE decode",
                "peak memory",
                "PSNR of the decoded layers vs exact default",
            ):
                assert f"preset {speed}/{memory}: {figure}" in measures
    table = json.loads(table_path.read_text())
    (entry,) = table["devices"]
    assert entry["name"] == "cpu (dry run)" and len(entry["points"]) == 3
    assert set(entry["points"][0]["tflops"]) == {"triton", "sdpa"}
    assert "skipped" not in result.stdout
