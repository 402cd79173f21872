"""User journeys: every step is a real subprocess in a fresh interpreter, on files on disk.

Nothing here imports a model class into the process that loads the model: a saved folder must load
through the public entry points alone (``layerflow ...``, ``python -m layerflow``,
``LayerFlowPipeline.from_pretrained`` after a bare ``import layerflow``). These are the tests that
fail when the product fails for a user, whatever the in-process tests say.

``LayerFlowPipeline``/``DiffusionPipeline.from_pretrained`` after a bare ``import layerflow`` is the
journey of ``test_loading_fresh_process.py`` (checked there against in-process latents).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerflow.layout import LayerLayout
from layerflow.media import read_manifest, read_png_sequence, write_png_sequence
from layerflow.testing import (
    build_tiny_pipeline,
    build_tiny_transformer,
    official_state_dict,
    random_layer_frames,
    random_lora_factors,
    single_thread,
    write_official_checkpoint,
)

PROMPTS = ["-p", "foreground=a red circle", "-p", "background=blue stripes", "-p", "composite=a red circle"]
FAST = ["--steps", "2", "--no-video", "--frames", "8", "--height", "16", "--width", "16", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a fresh interpreter; it must succeed (its stderr is shown when it does not)."""
    done = subprocess.run(
        [str(part) for part in argv], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=900
    )
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def layerflow(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed ``layerflow`` console script (the entry point a user types)."""
    script = Path(sys.executable).with_name("layerflow")
    assert script.is_file(), f"the layerflow console script is not installed next to {sys.executable}"
    return run(script, *argv)


def assert_output(folder: Path, task: str) -> None:
    manifest = read_manifest(folder)
    assert manifest.task == task and manifest.num_frames == 8
    for layer in manifest.layers:
        frames = read_png_sequence(folder / layer.files["png"], layer.kind)
        assert frames.shape == (8, 4 if layer.transparent else 3, 16, 16)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    with single_thread():
        build_tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    for name, frames in random_layer_frames(LayerLayout.official()).items():
        write_png_sequence(folder / name, frames)
    return folder


def test_python_m_layerflow_help() -> None:
    out = run(sys.executable, "-m", "layerflow", "--help").stdout
    assert all(
        verb in out for verb in ("generate", "fg2bg", "bg2fg", "decompose", "convert", "train", "eval")
    )


def test_generate_then_info_then_eval(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert f"wrote {out}" in layerflow("generate", model_dir, "-o", out, *PROMPTS, *FAST).stdout
    assert_output(out, "generate")
    assert "task generate, 8 frames of 16x16" in layerflow("info", out).stdout
    layerflow("eval", out, "--report-dir", tmp_path / "report")
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report and not (out / "metrics.json").exists()


@pytest.mark.parametrize(
    ("command", "task", "condition"),
    [
        ("fg2bg", "foreground_to_background", "foreground"),
        ("bg2fg", "background_to_foreground", "background"),
        ("decompose", "decompose", "composite"),
    ],
)
def test_conditional_task(
    model_dir: Path, clips: Path, tmp_path: Path, command: str, task: str, condition: str
) -> None:
    prompts = PROMPTS[:4] if command == "decompose" else PROMPTS
    out = tmp_path / "out"
    interval = ["--guidance-interval", "0", "0.5"]
    layerflow(
        command, model_dir, "-i", f"{condition}={clips / condition}", "-o", out, *prompts, *FAST, *interval
    )
    assert_output(out, task)
    assert read_manifest(out).settings["guidance_interval"] == [0.0, 0.5]


def test_train_stages_then_generate(tmp_path: Path) -> None:
    root = tmp_path / "train"
    small = ["--max-steps", "2", "--no-progress", "--set", "data.height=16", "--set", "data.width=16"]
    small += ["--set", "run.tracker='none'"]
    done = layerflow("train", "--stage", "2", "--earlier-stages", "--output-root", root, *small)
    assert "running stage 1 first" in done.stderr
    assert (root / "stage2" / "final" / "pipeline" / "model_index.json").is_file()
    layerflow("generate", root / "stage1" / "final" / "pipeline", "-o", tmp_path / "out", *PROMPTS, *FAST)
    assert_output(tmp_path / "out", "generate")


def test_convert_an_official_checkpoint_then_generate(model_dir: Path, tmp_path: Path) -> None:
    with single_thread():
        model = build_tiny_transformer(num_layer_prompts=3, sample_width=6)
        lora = random_lora_factors(model, 2, 0)
        official = write_official_checkpoint(tmp_path, official_state_dict(model, lora, lora))
    converted = tmp_path / "converted"
    layerflow(
        "convert", official, converted, "--base", model_dir, "--text-length", "12", "--latent-size", "4", "6"
    )
    assert sorted(p.name for p in (converted / "transformer" / "adapters").iterdir()) == ["content", "motion"]
    out = tmp_path / "out"
    layerflow("generate", converted, "-o", out, *PROMPTS, *FAST)
    assert_output(out, "generate")
