"""Saved pipeline folders load in a NEW interpreter through every public entry point.

diffusers only resolves ``model_index.json`` entries of modules that are already imported; in-process
tests import everything first and cannot see that. Each check here runs a fresh ``python -c`` on a
folder on disk and compares what it generates with the same pipeline run in this process (the oracle).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from layerflow.layout import LayerLayout
from layerflow.testing import build_tiny_pipeline, single_thread

PROMPTS = {"foreground": "red circle", "background": "blue stripes", "composite": "red circle blue stripes"}
RUN = "pipe(PROMPTS, num_frames=8, num_inference_steps=2, generator=torch.Generator().manual_seed(7), output_type='latent')"


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Path, torch.Tensor]]:
    """A saved tiny pipeline per alpha representation, with the latents it generates in this process."""
    return {}


def _saved(cache: dict[str, tuple[Path, torch.Tensor]], alpha: str, root: Path) -> tuple[Path, torch.Tensor]:
    if alpha in cache:
        return cache[alpha]
    folder = root / alpha / "model"
    with single_thread():
        pipe = build_tiny_pipeline(LayerLayout.official(alpha))
        pipe.save_pretrained(folder)
        expected = eval(RUN, {"pipe": pipe, "PROMPTS": PROMPTS, "torch": torch}).latents
    cache[alpha] = folder, expected
    return cache[alpha]


LOADERS = {
    "LayerFlowPipeline after import layerflow": "import layerflow\npipe = layerflow.LayerFlowPipeline.from_pretrained(folder)",
    "DiffusionPipeline, layerflow imported first": "import layerflow\nfrom diffusers import DiffusionPipeline\npipe = DiffusionPipeline.from_pretrained(folder)",
    "DiffusionPipeline, diffusers imported first": "from diffusers import DiffusionPipeline\nimport layerflow\npipe = DiffusionPipeline.from_pretrained(folder)",
}


# Every loader on the default layout; the transparent-VAE component (latent_offset) through the main one.
CASES = [("alpha_clip", loader) for loader in LOADERS] + [("latent_offset", next(iter(LOADERS)))]


@pytest.mark.parametrize(("alpha", "loader"), CASES)
def test_saved_pipeline_loads_and_generates_in_a_fresh_interpreter(saved, alpha, loader, tmp_path_factory):
    folder, expected = _saved(saved, alpha, tmp_path_factory.getbasetemp())
    tmp_path = tmp_path_factory.mktemp("run")
    out = tmp_path / "latents.safetensors"
    code = f"""
import sys
folder, out = sys.argv[1], sys.argv[2]
{LOADERS[loader]}
import torch
from safetensors.torch import save_file
torch.set_num_threads(1)
PROMPTS = {PROMPTS!r}
assert type(pipe).__name__ == "LayerFlowPipeline", type(pipe)
save_file({{"latents": {RUN}.latents.contiguous()}}, out)
"""
    result = _python(code, str(folder), str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    torch.testing.assert_close(load_file(out)["latents"], expected, rtol=0, atol=0)


def test_import_layerflow_stays_light():
    result = _python(
        "import sys, layerflow; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
