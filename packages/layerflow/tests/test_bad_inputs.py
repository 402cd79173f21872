"""The bad-input catalogue: one test per bad input a user can give, each asserting that the message
names the problem (file, key, layer or value), that nothing partial is written and that nothing the
user did not ask to delete is deleted.

CLI probes call ``layerflow.cli.main`` (the console script's function: its return value is the exit
status) and read stderr; a few run as real subprocesses to pin the process-level contract (exit
status 2, one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from layerflow import atomic
from layerflow.cli import main
from layerflow.layout import LayerLayout
from layerflow.media import (
    FrameError,
    OutputLayer,
    read_clip,
    read_image,
    write_output_dir,
    write_png_sequence,
    write_video,
)
from layerflow.testing import (
    build_tiny_pipeline,
    build_tiny_transformer,
    hold_lock_elsewhere,
    official_state_dict,
    random_layer_frames,
    random_lora_factors,
    single_thread,
    write_official_checkpoint,
)
from layerflow.training import main as train_main

PROMPTS = ["-p", "foreground=a red circle", "-p", "background=blue stripes", "-p", "composite=a red circle"]
FAST = ["--steps", "1", "--no-video", "--frames", "8", "--height", "16", "--width", "16", "--device", "cpu"]
CONVERT_TINY = ["--text-length", "12", "--latent-size", "4", "6"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def pipe():
    pipeline = build_tiny_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def saved(tmp_path_factory, pipe) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture
def model_dir(saved, tmp_path) -> Path:
    """A private copy of the saved model, free to break."""
    return Path(shutil.copytree(saved, tmp_path / "model"))


@pytest.fixture
def output(saved, tmp_path) -> Path:
    """An earlier generate output (a folder layerflow wrote)."""
    assert main(["generate", str(saved), "-o", str(tmp_path / "earlier"), *PROMPTS, *FAST]) == 0
    return tmp_path / "earlier"


def fails(capsys, argv, *needles) -> str:
    """``layerflow argv`` exits 2 with one line on stderr containing every needle."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("layerflow: error:") and err.count("\n") == 1, err
    for needle in needles:
        assert str(needle) in err, err
    return err


def fails_in_a_process(argv, *needles, cwd=None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "layerflow", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("layerflow: error:") and done.stderr.count("\n") == 1, done.stderr
    assert all(str(needle) in done.stderr for needle in needles), done.stderr


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def generate(model, out, *extra):
    return [str(part) for part in ("generate", model, "-o", out, *PROMPTS, *FAST, *extra)]


# ------------------------------------------------------------------ 1. --overwrite
def test_overwrite_never_replaces_the_model_folder(model_dir) -> None:
    before = tree(model_dir)
    fails_in_a_process(generate(model_dir, model_dir, "--overwrite"), "contains the input", model_dir)
    assert tree(model_dir) == before


def test_overwrite_never_replaces_an_ancestor_of_an_input(model_dir, tmp_path, capsys) -> None:
    (tmp_path / "unrelated.txt").write_text("keep me")
    fails(capsys, generate(model_dir, tmp_path, "--overwrite"), "contains the input")
    assert (tmp_path / "unrelated.txt").read_text() == "keep me" and (
        model_dir / "model_index.json"
    ).is_file()


def test_overwrite_only_replaces_an_earlier_output(saved, tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    fails(capsys, generate(saved, folder, "--overwrite"), f"output {folder}", "no manifest.json")
    assert (folder / "holiday.jpg").read_bytes() == b"precious"


def test_overwrite_replaces_an_earlier_output(saved, output, capsys) -> None:
    assert main(generate(saved, output, "--overwrite", "--seed", "1")) == 0
    assert json.loads((output / "manifest.json").read_text())["seed"] == 1


def test_output_dot_is_refused(saved, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("keep")
    fails(capsys, generate(saved, ".", "--overwrite"), "output . is the current folder")
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_convert_overwrite_never_replaces_the_base(saved, model_dir, tmp_path, capsys) -> None:
    official = write_official_checkpoint(tmp_path, {"x": torch.zeros(1)})
    before = tree(model_dir)
    fails(
        capsys, ["convert", official, model_dir, "--overwrite"], "not written by layerflow", "conversion.json"
    )
    fails(
        capsys,
        ["convert", official, model_dir.parent, "--base", model_dir, "--overwrite"],
        "contains the input",
    )
    assert tree(model_dir) == before


def test_library_overwrite_refuses_a_foreign_folder(tmp_path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x")
    layer = OutputLayer("composite", "composite", torch.rand(8, 3, 16, 16))
    with pytest.raises(FileExistsError, match="no manifest.json"):
        write_output_dir(tmp_path / "out", [layer], task="generate", formats=("png",), overwrite=True)
    assert (tmp_path / "out" / "mine.txt").read_text() == "x"


# ------------------------------------------------------------------ 5. NaN, inf and range
def _conditions(name: str, edit) -> dict[str, torch.Tensor]:
    frames = random_layer_frames(LayerLayout.official())[name]
    return {name: edit(frames)}


def _nan_pixel(frames):
    frames = frames.clone()
    frames[3, 1, 5, 7] = float("nan")
    return frames


@pytest.mark.parametrize(
    ("task", "name", "edit", "message"),
    [
        ("background_to_foreground", "background", _nan_pixel, "condition 'background' has 1 NaN/inf"),
        ("decompose", "composite", lambda f: f * 255, "(0-255 frames: divide by 255)"),
        ("decompose", "composite", lambda f: (f * 255).to(torch.uint8), "condition 'composite' is uint8"),
        (
            "foreground_to_background",
            "foreground",
            lambda f: torch.cat([f[:, :3], f[:, 3:] * 2 - 0.5], 1),
            "condition 'foreground' has alpha values in [-0.",
        ),
    ],
)
def test_condition_values_are_checked_before_any_model_runs(pipe, task, name, edit, message) -> None:
    calls = []
    hook = pipe.vae.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError) as error:
            prompts = {"foreground": "a", "background": "b", "composite": "c"}
            task_layout = pipe.layer_layout.for_task(task)
            pipe(
                {layer.name: prompts[layer.name] for layer in task_layout.prompt_layers},
                task,
                conditions=_conditions(name, edit),
            )
    finally:
        hook.remove()
    assert message in str(error.value) and f"condition {name!r}" in str(error.value)
    assert not calls  # refused before the VAE ran


@pytest.mark.parametrize("scale", [math.inf, math.nan])
def test_guidance_scale_must_be_finite(pipe, scale) -> None:
    with pytest.raises(ValueError, match=f"guidance_scale must be a finite number, got {scale}"):
        pipe({"foreground": "a", "background": "b", "composite": "c"}, num_frames=8, guidance_scale=scale)


def test_pipeline_height_zero_is_refused(pipe) -> None:
    with pytest.raises(ValueError, match="height must be >= 1, got 0"):
        pipe({"foreground": "a", "background": "b", "composite": "c"}, num_frames=8, height=0)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--guidance", "nan", "--guidance must be a finite number, got nan"),
        ("--guidance", "inf", "--guidance must be a finite number, got inf"),
        ("--height", "0", "--height must be >= 1, got 0"),
        ("--width", "-16", "--width must be >= 1, got -16"),
        ("--frames", "0", "--frames must be >= 1, got 0"),
        ("--steps", "0", "--steps must be >= 1, got 0"),
        ("--fps", "0", "--fps must be >= 1, got 0"),
        ("--frames", "100000", "--frames must be <= 1024, got 100000"),
        ("--height", "100000", "--height must be <= 8192, got 100000"),
        ("--width", "9000", "--width must be <= 8192, got 9000"),
        ("--steps", "1000000", "--steps must be <= 1000, got 1000000"),
        ("--guidance", "1e30", "--guidance must be between -100 and 100, got 1e+30"),
        ("--seed", str(2**70), f"--seed must be between {-(2**63)} and {2**64 - 1}, got {2**70}"),
        ("--fps", "100000", "--fps must be <= 1000, got 100000"),
    ],
)
def test_cli_numbers(saved, tmp_path, capsys, flag, value, message) -> None:
    fails(capsys, [*generate(saved, tmp_path / "out"), flag, value], message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("start", "stop", "message"),
    [
        ("0.5", "0.2", "--guidance-interval: guidance_interval must satisfy 0 <= start < stop <= 1"),
        ("0", "nan", "--guidance-interval: guidance_interval must satisfy 0 <= start < stop <= 1"),
        ("-1", "1", "got (-1.0, 1.0)"),
    ],
)
def test_cli_guidance_interval(saved, tmp_path, capsys, start, stop, message) -> None:
    fails(capsys, [*generate(saved, tmp_path / "out"), "--guidance-interval", start, stop], message)
    assert not (tmp_path / "out").exists()


def test_sizes_are_sized_from_the_machines_memory(saved, tmp_path, capsys, monkeypatch) -> None:
    """Within the fixed limits, 1024 frames of 512x512 in the official layout's 4 clips hold at least
    4 * 1024 * 3 * 512 * 512 * 2 bytes = 6 GiB: refused on a machine of 1 GiB, before any model loads."""
    from layerflow import tasks

    monkeypatch.setattr(tasks, "host_memory", lambda: 2**30)
    big = ["--frames", "1024", "--height", "512", "--width", "512"]
    fails(capsys, [*generate(saved, tmp_path / "out"), *big], "needs at least 6 GiB for the 4 decoded clips")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_demo_seed_has_the_training_seeds_range(tmp_path, capsys, seed) -> None:
    """It seeds the training run (``run.seed``): refused before any data is generated."""
    from layerflow.demo import main as demo_main

    with pytest.raises(SystemExit) as stopped:
        demo_main(["--seed", seed, "--output-dir", str(tmp_path / "demo")])
    assert stopped.value.code == 2
    assert f"--seed must be in [0, {2**63 - 1}], got {seed}" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_guidance_nan_in_a_process(saved, tmp_path) -> None:
    fails_in_a_process([*generate(saved, tmp_path / "out"), "--guidance", "nan"], "--guidance")
    assert not (tmp_path / "out").exists()


def test_nan_output_frames_are_not_saved_as_black_pngs(tmp_path) -> None:
    frames = torch.rand(8, 3, 16, 16)
    frames[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 'composite' has 1 NaN/inf"):
        write_output_dir(tmp_path / "out", [OutputLayer("composite", "composite", frames)], task="generate")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 6. model folders and settings
def _drop(path: Path) -> None:
    path.unlink()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda m: _drop(m / "vae" / "config.json"), "vae has no config.json"),
        (
            lambda m: _drop(m / "transformer" / "diffusion_pytorch_model.safetensors"),
            "transformer has no weights",
        ),
        (lambda m: _truncate(m / "transformer" / "diffusion_pytorch_model.safetensors"), "is truncated"),
        (lambda m: _truncate(m / "text_encoder" / "model.safetensors"), "model.safetensors is truncated"),
        (lambda m: (m / "model_index.json").write_text("{not json"), "model_index.json is not valid JSON"),
        (lambda m: (m / "model_index.json").write_text("[1, 2]"), "must hold a JSON object"),
        (lambda m: (m / "vae" / "config.json").write_text('{"a": '), "config.json is not valid JSON"),
    ],
)
def test_broken_model_folder_is_named_before_loading(model_dir, tmp_path, capsys, breakage, message) -> None:
    breakage(model_dir)
    fails(capsys, generate(model_dir, tmp_path / "out"), message)
    assert not (tmp_path / "out").exists()


def test_malformed_model_index_entry(model_dir, tmp_path, capsys) -> None:
    index = json.loads((model_dir / "model_index.json").read_text())
    index["vae"] = "AutoencoderKLCogVideoX"
    (model_dir / "model_index.json").write_text(json.dumps(index))
    fails(capsys, generate(model_dir, tmp_path / "out"), "entries ['vae'] must be [library, class] pairs")


def test_info_on_a_malformed_model_index_in_a_process(model_dir) -> None:
    (model_dir / "model_index.json").write_text("{not json")
    fails_in_a_process(["info", model_dir], "model_index.json is not valid JSON")


@pytest.mark.parametrize(
    ("device", "message"),
    [("bogus", "--device 'bogus' is not a device"), ("cuda:99", "--device cuda:99")],
)
def test_device_is_checked_before_loading(saved, tmp_path, capsys, device, message) -> None:
    fails(capsys, [*generate(saved, tmp_path / "out"), "--device", device], message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")  # cuda:99 covers CUDA hosts
def test_unavailable_cuda(saved, tmp_path, capsys) -> None:
    fails(capsys, [*generate(saved, tmp_path / "out"), "--device", "cuda"], "no CUDA device is available")


def test_unwritable_output_is_found_before_generating(saved, capsys) -> None:
    # /sys refuses new folders even to root (EPERM), like a read-only file system
    fails(capsys, generate(saved, "/sys/layerflow-test/out"), "cannot write output /sys/layerflow-test/out")


def _tiny_official(tmp_path: Path, **edit) -> Path:
    model = build_tiny_transformer(num_layer_prompts=3, sample_width=6)
    lora = random_lora_factors(model, 2, 0)
    return write_official_checkpoint(tmp_path, official_state_dict(model, lora, lora) | edit)


def test_convert_lora_shape_mismatch(tmp_path, capsys) -> None:
    key = "model.diffusion_model.transformer.layers.0.attention.dense.matrix_A.0"
    official = _tiny_official(tmp_path, **{key: torch.randn(2, 17)})
    fails(
        capsys, ["convert", official, tmp_path / "out", *CONVERT_TINY], "transformer_blocks.0.attn1.to_out.0"
    )
    assert not (tmp_path / "out").exists()


def test_convert_list_module(tmp_path, capsys) -> None:
    folder = tmp_path / "exp"
    folder.mkdir()
    torch.save({"module": [torch.zeros(2)]}, folder / "mp_rank_00_model_states.pt")
    fails(
        capsys,
        ["convert", folder, tmp_path / "out"],
        "'module' must map parameter names to tensors, got a list",
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("{oops", "manifest.json is not valid JSON"),
        ("[]", "must hold a JSON object, got list"),
        (
            '{"format": "layerflow-output", "version": 1, "task": "generate", "num_frames": 8, "height": 16, '
            '"width": 16, "layers": {"a": 1}}',
            "'layers' must be a non-empty list",
        ),
        (
            '{"format": "layerflow-output", "version": 1, "task": "generate", "num_frames": "8", "height": 16, '
            '"width": 16, "layers": []}',
            "num_frames must be a positive integer, got '8'",
        ),
        (
            '{"format": "layerflow-output", "version": 1, "task": "generate", "num_frames": 8, "height": 16, '
            '"width": 16, "layers": ["x"]}',
            "layer 0 must be an object",
        ),
    ],
)
def test_eval_on_a_malformed_manifest(tmp_path, capsys, manifest, message) -> None:
    (tmp_path / "manifest.json").write_text(manifest)
    fails(capsys, ["eval", tmp_path], message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


# ------------------------------------------------------------------ 9. permissions follow the umask
@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_follow_the_umask(tmp_path, mask, file_mode, dir_mode) -> None:
    import multi_lora
    from transparent_vae._files import atomic_directory as tvae_directory

    previous = os.umask(mask)
    try:
        out = write_output_dir(
            tmp_path / "out",
            [OutputLayer("composite", "composite", torch.rand(8, 3, 16, 16))],
            task="generate",
        )
        atomic.write_text_atomic(tmp_path / "note.txt", "x")
        tvae_directory(tmp_path / "tvae", lambda folder: (folder / "a.txt").write_text("a"))
        model = torch.nn.Sequential(torch.nn.Linear(4, 4))
        multi_lora.add_adapter(model, "a", rank=2, alpha=1.0, target_modules=["0"])
        multi_lora.save_adapter(model, "a", tmp_path / "lora")
        build_tiny_pipeline().save_pretrained(
            tmp_path / "pipe", safe_serialization=True
        )  # diffusers writes 0600
    finally:
        os.umask(previous)
    files = [p for name in ("tvae", "lora", "pipe") for p in (tmp_path / name).rglob("*")]
    files += list(out.rglob("*"))
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "pipe").rglob("*"))
    files += [tmp_path / "note.txt"]
    folders = [out, tmp_path / "tvae", *(p for p in files if p.is_dir())]
    assert {stat.S_IMODE(p.stat().st_mode) for p in files if p.is_file()} == {file_mode}
    assert {stat.S_IMODE(p.stat().st_mode) for p in folders} == {dir_mode}


# ------------------------------------------------------------------ 10. confinement
@pytest.mark.parametrize("frames", ["../elsewhere", "/etc", "composite/../.."])
def test_eval_refuses_frames_outside_the_output(output, capsys, frames) -> None:
    manifest = json.loads((output / "manifest.json").read_text())
    manifest["layers"][2]["files"]["png"] = frames
    (output / "manifest.json").write_text(json.dumps(manifest))
    fails(capsys, ["eval", output], f"{frames!r} points outside the output folder")
    assert not (output / "metrics.json").exists()


def test_convert_refuses_a_latest_outside_the_experiment(tmp_path, capsys) -> None:
    official = _tiny_official(tmp_path / "a")
    elsewhere = _tiny_official(tmp_path / "b")
    (official / "latest").write_text(f"../../b/{elsewhere.name}/1000\n")
    fails(
        capsys,
        ["convert", official, tmp_path / "out", *CONVERT_TINY],
        "latest names",
        "not an iteration folder",
    )
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ 11. interrupted replacement
def test_a_crash_between_two_renames_is_recovered(tmp_path, monkeypatch) -> None:
    target = tmp_path / "final"
    with atomic.atomic_directory(target) as folder:
        (folder / "weights").write_text("old")
    monkeypatch.setattr(atomic, "_exchange", lambda first, second: False)  # a system without renameat2
    real_replace = os.replace

    def crash_on_second_rename(source, destination):
        if Path(source).name.endswith(".tmp"):
            raise KeyboardInterrupt("killed between the renames")
        real_replace(source, destination)

    monkeypatch.setattr(atomic.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt), atomic.atomic_directory(target, overwrite=True) as folder:
        (folder / "weights").write_text("new")
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    backup = tmp_path / ".final.layerflow-backup"
    assert not target.exists() and (backup / "content" / "weights").read_text() == "old"
    with atomic.atomic_directory(target, overwrite=True) as folder:  # the next run recovers, then replaces
        assert (target / "weights").read_text() == "old"
        (folder / "weights").write_text("new")
    assert (target / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_replacing_a_folder_swaps_atomically(tmp_path) -> None:
    target = tmp_path / "final"
    for content in ("old", "new"):
        with atomic.atomic_directory(target, overwrite=True) as folder:
            (folder / "weights").write_text(content)
    assert (target / "weights").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["final"]


def test_a_look_alike_manifest_is_not_ours(saved, tmp_path, capsys) -> None:
    app = tmp_path / "webapp"
    app.mkdir()
    (app / "manifest.json").write_text(json.dumps({"name": "my app", "start_url": "/"}))
    (app / "index.html").write_text("<html>")
    before = tree(app)
    fails(capsys, generate(saved, app, "--overwrite"), f"output {app}", "manifest.json is not layerflow's")
    assert tree(app) == before


def test_a_folder_that_appears_meanwhile_is_not_replaced(saved, tmp_path, capsys, monkeypatch) -> None:
    from layerflow import cli

    out, real_run = tmp_path / "out", cli.tasks.run

    def run_then_someone_writes(*args, **kwargs):
        result = real_run(*args, **kwargs)
        out.mkdir()
        (out / "mine.txt").write_text("keep")
        return result

    monkeypatch.setattr(cli.tasks, "run", run_then_someone_writes)
    assert main(generate(saved, out)) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the sampler's progress bars
    assert last.startswith(f"layerflow: error: {out} already exists"), last
    assert tree(out) == {"mine.txt": b"keep"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_the_decision_is_taken_at_the_end(tmp_path, overwrite) -> None:
    target = tmp_path / "final"
    with (
        pytest.raises(FileExistsError, match="final"),
        atomic.atomic_directory(target, overwrite=overwrite, replaces="manifest.json") as folder,
    ):
        (folder / "weights").write_text("new")
        target.mkdir()
        (target / "manifest.json").write_text("{}" if overwrite else "not json")
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json"]


@pytest.mark.parametrize("name", [".out.old", ".out.layerflow-backup"])
def test_a_user_folder_named_like_a_backup_is_left_alone(saved, tmp_path, capsys, name) -> None:
    look_alike = tmp_path / name
    look_alike.mkdir()
    (look_alike / "thesis.tex").write_text("mine")
    assert main(generate(saved, tmp_path / "out")) == 0  # not moved into place as the "old" output
    assert main(generate(saved, tmp_path / "out", "--overwrite", "--seed", "1")) == 0
    assert (look_alike / "thesis.tex").read_text() == "mine"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["seed"] == 1


def test_a_second_writer_of_one_output_is_refused(saved, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    holder = hold_lock_elsewhere(out)
    try:
        fails(capsys, generate(saved, out), f"{out} is being written by layerflow process {holder.pid}")
    finally:
        holder.communicate("")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_stale_lock_of_a_killed_writer_is_taken_over(saved, tmp_path) -> None:
    out = tmp_path / "out"
    holder = hold_lock_elsewhere(out)
    holder.kill()
    holder.communicate()
    assert (tmp_path / ".out.layerflow-lock").read_text().split()[0] == str(holder.pid)
    assert main(generate(saved, out)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_two_concurrent_generates_one_wins(saved, tmp_path) -> None:
    """Two real processes into one -o at once: one writes, the other fails naming the folder."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "layerflow", *generate(saved, out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in "ab"
    ]
    done = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    assert sorted(code for code, _, _ in done) == [0, 2], done
    (_, loser_out, loser_err) = next(d for d in done if d[0] == 2)
    assert loser_out == "" and loser_err.count("\n") == 1, loser_err
    assert f"output {out}" in loser_err or "being written by" in loser_err, loser_err


# ------------------------------------------------------------------ 13. every PNG mode, one reader
def _write_png(path: Path, array, color_type: int, depth: int, transparent: tuple[int, ...] = ()) -> Path:
    """A PNG PIL cannot write (16-bit RGB/RGBA/grey + alpha), encoded by hand: IHDR, tRNS when a
    ``transparent`` colour is given, one IDAT, IEND."""
    array = np.asarray(array)
    rows = array.astype(">u2" if depth == 16 else np.uint8).reshape(array.shape[0], -1)
    data = b"".join(b"\0" + row.tobytes() for row in rows)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", array.shape[1], array.shape[0], depth, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + (chunk(b"tRNS", struct.pack(f">{len(transparent)}H", *transparent)) if transparent else b"")
        + chunk(b"IDAT", zlib.compress(data))
        + chunk(b"IEND", b"")
    )
    return path


def _pil_png(path: Path, array, mode: str | None = None, **options) -> Path:
    image = (
        Image.fromarray(np.asarray(array), mode)
        if mode != "P"
        else Image.fromarray(np.asarray(array, np.uint8), "P")
    )
    if mode == "P":
        image.putpalette([255, 0, 0, 0, 0, 255])
    image.save(path, **options)
    return path


_GREY = [0.0, 51 / 255, 1.0]
# name: (writer, expected RGB [pixels][3], expected alpha per pixel or None, tolerance)
PNG_MODES = {
    "1-bit grey": (lambda p: _pil_png(p, np.array([[0, 1, 1]], bool)), [[0] * 3, [1] * 3, [1] * 3], None, 0),
    "8-bit grey": (
        lambda p: _pil_png(p, np.array([[0, 51, 255]], np.uint8)),
        [[g] * 3 for g in _GREY],
        None,
        0,
    ),
    "16-bit grey": (
        lambda p: _pil_png(p, np.array([[0, 1000, 65535]], np.uint16)),
        [[v / 65535] * 3 for v in (0, 1000, 65535)],
        None,
        1e-6,
    ),
    "16-bit grey, tRNS": (
        lambda p: _pil_png(p, np.array([[0, 1000, 65535]], np.uint16), transparency=1000),
        [[v / 65535] * 3 for v in (0, 1000, 65535)],
        [1, 0, 1],
        1e-6,
    ),
    "8-bit grey, tRNS": (
        lambda p: _pil_png(p, np.array([[0, 51, 255]], np.uint8), transparency=51),
        [[g] * 3 for g in _GREY],
        [1, 0, 1],
        0,
    ),
    "grey + alpha": (
        lambda p: _pil_png(p, np.array([[[0, 255], [51, 0], [255, 102]]], np.uint8), "LA"),
        [[g] * 3 for g in _GREY],
        [1, 0, 0.4],
        1e-6,
    ),
    "palette, tRNS": (
        lambda p: _pil_png(p, [[0, 1, 0]], "P", transparency=1),
        [[1, 0, 0], [0, 0, 1], [1, 0, 0]],
        [1, 0, 1],
        0,
    ),
    "8-bit RGB": (
        lambda p: _pil_png(p, np.array([[[255, 0, 51], [0, 255, 0], [51, 51, 51]]], np.uint8)),
        [[1, 0, 0.2], [0, 1, 0], [0.2, 0.2, 0.2]],
        None,
        1e-6,
    ),
    "8-bit RGBA": (
        lambda p: _pil_png(p, np.array([[[255, 0, 51, 255], [0, 255, 0, 0], [51, 51, 51, 102]]], np.uint8)),
        [[1, 0, 0.2], [0, 1, 0], [0.2, 0.2, 0.2]],
        [1, 0, 0.4],
        1e-6,
    ),
    # 16-bit colour: values no 8-bit reading can hold (1, 1000, 40000 of 65535), compared exactly.
    "16-bit RGB": (
        lambda p: _write_png(p, [[[65535, 0, 1000], [1, 65535, 0], [40000, 40000, 40000]]], 2, 16),
        [[1, 0, 1000 / 65535], [1 / 65535, 1, 0], [40000 / 65535] * 3],
        None,
        1e-7,
    ),
    "16-bit RGB, tRNS": (
        lambda p: _write_png(
            p, [[[65535, 0, 1000], [1, 65535, 0], [40000, 40000, 40000]]], 2, 16, (1, 65535, 0)
        ),
        [[1, 0, 1000 / 65535], [1 / 65535, 1, 0], [40000 / 65535] * 3],
        [1, 0, 1],
        1e-7,
    ),
    "16-bit RGBA": (
        lambda p: _write_png(p, [[[65535, 0, 1000, 65535], [1, 65535, 0, 0], [40000] * 3 + [1000]]], 6, 16),
        [[1, 0, 1000 / 65535], [1 / 65535, 1, 0], [40000 / 65535] * 3],
        [1, 0, 1000 / 65535],
        1e-7,
    ),
    "16-bit grey + alpha": (
        lambda p: _write_png(p, [[[65535, 65535], [1, 0], [40000, 1000]]], 4, 16),
        [[1] * 3, [1 / 65535] * 3, [40000 / 65535] * 3],
        [1, 0, 1000 / 65535],
        1e-7,
    ),
}


@pytest.mark.parametrize("name", PNG_MODES)
def test_every_png_mode_reads_as_its_pixels(tmp_path, name) -> None:
    write, rgb, alpha, tolerance = PNG_MODES[name]
    path = write(tmp_path / "0000.png")
    expected = np.array(rgb, np.float32)[None]
    assert np.abs(read_image(path, "rgb") - expected).max() <= tolerance + 1e-7
    if alpha is None:
        with pytest.raises(FrameError, match="no alpha channel"):
            read_image(path, "rgba")
        return
    rgba = read_image(path, "rgba")
    assert np.abs(rgba[..., :3] - expected).max() <= tolerance + 1e-7
    assert np.abs(rgba[..., 3] - np.array([alpha], np.float32)).max() <= tolerance + 1e-7
    matte = read_image(path, "alpha")  # an image with alpha given as a matte: its alpha
    assert np.abs(matte[..., 0] - np.array([alpha], np.float32)).max() <= tolerance + 1e-7


@pytest.mark.parametrize(
    "name",
    ["8-bit RGBA", "grey + alpha", "palette, tRNS", "16-bit grey", "16-bit RGBA", "16-bit grey + alpha"],
)
def test_a_matte_given_with_a_is_read_by_the_same_rules(tmp_path, name) -> None:
    from layerflow.cli import load_inputs

    write, rgb, alpha, tolerance = PNG_MODES[name]
    for folder in ("colour", "matte"):
        (tmp_path / folder).mkdir()
    _pil_png(tmp_path / "colour" / "0000.png", np.zeros((1, 3, 3), np.uint8))
    write(tmp_path / "matte" / "0000.png")
    frames = load_inputs({"foreground": str(tmp_path / "colour")}, {"foreground": str(tmp_path / "matte")})
    expected = alpha if alpha is not None else [v[0] for v in rgb]
    assert (frames["foreground"][0, 3, 0] - torch.tensor(expected)).abs().max() <= tolerance + 1e-6


def test_16bit_frames_reach_every_reader_at_full_precision(tmp_path) -> None:
    """CLI inputs and recompose (``read_clip``), eval references (``read_png_sequence``) and the
    training readers (``ImageSequence``) all see 40000/65535, not an 8-bit step or white."""
    from layerflow.data.frames import ImageSequence
    from layerflow.editing.recompose import Replacement
    from layerflow.media import read_png_sequence

    folder = tmp_path / "deep"
    folder.mkdir()
    _write_png(folder / "0000.png", [[[40000, 1, 65535], [0, 1000, 40000]]], 2, 16)
    expected = torch.tensor([[40000, 1, 65535], [0, 1000, 40000]], dtype=torch.float32).T[:, None] / 65535
    assert torch.equal(read_clip(folder)[0], expected)
    assert torch.equal(Replacement.from_path("background", folder).frames[0], expected)
    assert torch.equal(read_png_sequence(folder, "rgb")[0], expected)
    training = ImageSequence([folder / "0000.png"], "rgb").read([0])
    assert torch.equal(torch.from_numpy(training[0]).permute(2, 0, 1), expected)


def test_a_truncated_video_is_an_error(saved, tmp_path, capsys) -> None:
    whole = write_video(tmp_path / "whole.webm", torch.rand(8, 3, 16, 16), 8, format="webm")
    short = tmp_path / "short.webm"
    short.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    argv = ["bg2fg", saved, "-o", tmp_path / "out", *PROMPTS, "-i", f"background={short}", *FAST]
    fails(capsys, argv, f"{short}: video is truncated or damaged", "of the 8 frames")
    assert read_clip(whole).shape[0] == 8


def test_a_longer_input_gives_its_first_frames_only_on_request(saved, tmp_path, capsys) -> None:
    """12 frames for a model that runs 1, 8, 9, 16, ...: an error naming --trim; with --trim the
    first 9 (or --frames 8); never padded to more."""
    clip = torch.rand(12, 3, 16, 16)
    write_png_sequence(tmp_path / "bg12", clip)
    sizes = ["--steps", "1", "--no-video", "--height", "16", "--width", "16", "--device", "cpu"]
    base = ["bg2fg", saved, *PROMPTS, "-i", f"background={tmp_path / 'bg12'}", *sizes]
    fails(
        capsys,
        [*base, "-o", tmp_path / "a"],
        "num_frames=12 per clip",
        "add --trim to use the first 9 frames",
    )
    fails(capsys, [*base, "-o", tmp_path / "b", "--frames", "8"], "inputs have 12 frames", "add --trim")
    fails(capsys, [*base, "-o", tmp_path / "c", "--frames", "16"], "inputs are never padded")
    fails(
        capsys,
        [*base, "-o", tmp_path / "c", "--frames", "16", "--trim"],
        "--trim takes fewer frames, never more",
    )
    assert not any((tmp_path / name).exists() for name in "abc")
    write_png_sequence(tmp_path / "bg9", clip[:9])
    cut = ["bg2fg", saved, *PROMPTS, "-i", f"background={tmp_path / 'bg9'}", *sizes, "-o", tmp_path / "cut"]
    assert main([str(a) for a in cut]) == 0  # the oracle: the first 9 frames, cut by hand
    for extra, count in (([], 9), (["--frames", "8"], 8)):
        out = tmp_path / f"trimmed{count}"
        assert main([str(a) for a in (*base, "-o", out, "--trim", *extra)]) == 0
        assert json.loads((out / "manifest.json").read_text())["num_frames"] == count
    assert tree(tmp_path / "trimmed9") == tree(tmp_path / "cut")


def test_a_truncated_video_gives_what_decodes_only_on_request(saved, tmp_path, caplog) -> None:
    whole = write_video(tmp_path / "whole.webm", torch.rand(16, 3, 16, 16), 8, format="webm")
    short = tmp_path / "short.webm"
    short.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    decoded = read_clip(short, partial=True).shape[0]
    assert 8 <= decoded < 16
    argv = ["bg2fg", saved, "-o", tmp_path / "out", *PROMPTS, "-i", f"background={short}", *FAST, "--trim"]
    assert main([str(a) for a in argv]) == 0
    assert f"warning: {short}: video is truncated or damaged: {decoded} of the 16" in caplog.text
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["num_frames"] == 8


# ------------------------------------------------------------------ 13b. special files, bombs
def _fifo_frame(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "frames").mkdir()
    os.mkfifo(tmp_path / "frames" / "0000.png")
    return tmp_path / "frames", f"{tmp_path / 'frames' / '0000.png'}: is a FIFO, not an image file"


def _fifo_video(tmp_path: Path) -> tuple[Path, str]:
    os.mkfifo(tmp_path / "clip.webm")
    return tmp_path / "clip.webm", f"{tmp_path / 'clip.webm'}: is a FIFO, not a video file"


def _bomb(tmp_path: Path) -> tuple[Path, str]:
    """A PNG of 30000 x 30000 pixels in a few kilobytes."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    path = tmp_path / "bomb.png"
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(30001 * 4))) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path, "could be decompression bomb"


SPECIAL_INPUTS = {
    "FIFO frame": _fifo_frame,
    "FIFO video": _fifo_video,
    "device": lambda tmp_path: (Path("/dev/zero"), "/dev/zero: is a device, not a video file"),
    "decompression bomb": _bomb,
}


@pytest.mark.parametrize("name", SPECIAL_INPUTS)
def test_special_files_and_bombs_are_refused_without_blocking(saved, tmp_path, capsys, name) -> None:
    path, message = SPECIAL_INPUTS[name](tmp_path)
    argv = ["bg2fg", saved, "-o", tmp_path / "out", *PROMPTS, "-i", f"background={path}", *FAST]
    signal.alarm(60)  # a FIFO opened for reading blocks: fail instead of hanging
    try:
        fails(capsys, argv, message)
    finally:
        signal.alarm(0)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ 14. malformed model folders
def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _set_index(model: Path, **changes) -> None:
    _edit_json(model / "model_index.json", **changes)


def _wrong_shape(model: Path) -> None:
    file = model / "transformer" / "diffusion_pytorch_model.safetensors"
    weights = load_file(file)
    weights["norm_out.linear.weight"] = torch.zeros(3, 5)
    save_file(weights, file)


def _pickled_object(model: Path) -> None:
    file = model / "transformer" / "diffusion_pytorch_model.safetensors"
    weights: dict = load_file(file)
    file.unlink()
    torch.save({**weights, "extra": argparse.Namespace(x=1)}, file.with_suffix(".bin"))


MODEL_DAMAGE = {
    "unknown class": (
        lambda m: _set_index(m, transformer=["layerflow.models.transformer_layerflow", "NoSuchModel"]),
        "model_index.json: 'transformer': layerflow.models.transformer_layerflow has no class 'NoSuchModel'",
    ),
    "foreign library": (
        lambda m: _set_index(m, transformer=["os", "system"]),
        "model_index.json: 'transformer' names library 'os'",
    ),
    "wrong kind": (
        lambda m: _set_index(m, scheduler=["diffusers", "AutoencoderKLCogVideoX"]),
        "model_index.json: 'scheduler': diffusers.AutoencoderKLCogVideoX is not a SchedulerMixin",
    ),
    "malformed layout": (
        lambda m: _set_index(m, layout={"layers": "foreground"}),
        "model_index.json: 'layout': malformed layer layout",
    ),
    "config value type": (
        lambda m: _edit_json(m / "transformer" / "config.json", num_layers="two"),
        "transformer/config.json: 'num_layers' must be an integer, got 'two'",
    ),
    "tensor shape": (
        _wrong_shape,
        "diffusion_pytorch_model.safetensors: tensor 'norm_out.linear.weight' has shape [3, 5], the config needs",
    ),
    "pickle objects": (_pickled_object, "diffusion_pytorch_model.bin: holds pickled objects besides tensors"),
}


@pytest.mark.parametrize("damage", MODEL_DAMAGE)
def test_a_malformed_model_folder_is_one_line(model_dir, tmp_path, capsys, damage) -> None:
    break_it, message = MODEL_DAMAGE[damage]
    break_it(model_dir)
    fails(capsys, generate(model_dir, tmp_path / "out"), message)
    assert not (tmp_path / "out").exists()


def _te_weights(model: Path, key: str, tensor: torch.Tensor) -> None:
    file = model / "text_encoder" / "model.safetensors"
    save_file({**load_file(file), key: tensor}, file)


def _te_config(model: Path, **changes) -> None:
    _edit_json(model / "text_encoder" / "config.json", **changes)


#: The T5 text encoder (a transformers model) is checked as the diffusers components are.
TEXT_ENCODER_DAMAGE = {
    "shape": (
        lambda m: _te_weights(m, "shared.weight", torch.zeros(38, 17)),
        "text_encoder/model.safetensors: tensor 'shared.weight' has shape [38, 17], the config needs [38, 16]",
    ),
    "int64": (
        lambda m: _te_weights(m, "encoder.final_layer_norm.weight", torch.ones(16, dtype=torch.int64)),
        "text_encoder/model.safetensors: tensor 'encoder.final_layer_norm.weight' is stored as I64, "
        "a weight must be floating point",
    ),
    "config type": (
        lambda m: _te_config(m, d_model="sixteen"),
        "text_encoder/config.json: 'd_model' must be an integer, got 'sixteen'",
    ),
}


@pytest.mark.parametrize("damage", TEXT_ENCODER_DAMAGE)
def test_a_malformed_text_encoder_is_one_line(model_dir, tmp_path, capsys, damage) -> None:
    break_it, message = TEXT_ENCODER_DAMAGE[damage]
    break_it(model_dir)
    fails(capsys, generate(model_dir, tmp_path / "out"), message)


def test_int64_transformer_weights_are_refused(model_dir, tmp_path, capsys) -> None:
    file = model_dir / "transformer" / "diffusion_pytorch_model.safetensors"
    weights = load_file(file)
    save_file({**weights, "norm_out.linear.weight": weights["norm_out.linear.weight"].long()}, file)
    fails(capsys, generate(model_dir, tmp_path / "out"), "tensor 'norm_out.linear.weight' is stored as I64")


def test_bin_weights_are_checked_as_safetensors_are(model_dir, tmp_path, capsys) -> None:
    file = model_dir / "transformer" / "diffusion_pytorch_model.safetensors"
    weights = load_file(file)
    file.unlink()
    torch.save(
        {**weights, "norm_out.linear.weight": weights["norm_out.linear.weight"].long()},
        file.with_suffix(".bin"),
    )
    fails(
        capsys,
        generate(model_dir, tmp_path / "out"),
        "diffusion_pytorch_model.bin: tensor 'norm_out.linear.weight' is stored as int64",
    )
    torch.save({**weights, "norm_out.linear.weight": torch.zeros(3, 5)}, file.with_suffix(".bin"))
    fails(
        capsys,
        generate(model_dir, tmp_path / "out"),
        "tensor 'norm_out.linear.weight' has shape [3, 5], the config needs",
    )


@pytest.fixture
def sharded(model_dir) -> Path:
    """The model with its text encoder in seven shards (``model.safetensors.index.json``)."""
    from transformers import T5EncoderModel

    folder = model_dir / "text_encoder"
    encoder = T5EncoderModel.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    encoder.save_pretrained(folder, max_shard_size="2KB")
    assert len(list(folder.glob("model-*.safetensors"))) > 2
    return model_dir


def _shard_of(model: Path, key: str) -> Path:
    index = json.loads((model / "text_encoder" / "model.safetensors.index.json").read_text())
    return model / "text_encoder" / index["weight_map"][key]


def _remap(model: Path, key: str, shard: str) -> None:
    index_file = model / "text_encoder" / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"][key] = shard
    index_file.write_text(json.dumps(index))


SHARD_DAMAGE = {
    "missing shard": (
        lambda m: _shard_of(m, "shared.weight").unlink(),
        "model.safetensors.index.json: shard 'model-",
        "(tensor 'shared.weight') is missing",
    ),
    "tensor not in its shard": (
        lambda m: _remap(m, "shared.weight", _shard_of(m, "encoder.final_layer_norm.weight").name),
        "model.safetensors.index.json: tensor 'shared.weight' is not in its shard 'model-",
    ),
    "shard outside the folder": (
        lambda m: _remap(m, "shared.weight", "../transformer/diffusion_pytorch_model.safetensors"),
        "tensor 'shared.weight' maps to '../transformer/diffusion_pytorch_model.safetensors', not a .safetensors file beside",
    ),
    "wrong shape in a shard": (
        lambda m: save_file({"shared.weight": torch.zeros(38, 17)}, _shard_of(m, "shared.weight")),
        "tensor 'shared.weight' has shape [38, 17], the config needs [38, 16]",
    ),
}


@pytest.mark.parametrize("damage", SHARD_DAMAGE)
def test_a_damaged_sharded_checkpoint_is_one_line(sharded, tmp_path, capsys, damage) -> None:
    break_it, *messages = SHARD_DAMAGE[damage]
    break_it(sharded)
    fails(capsys, generate(sharded, tmp_path / "out"), *messages)


def test_an_intact_sharded_checkpoint_generates(sharded, tmp_path) -> None:
    assert main(generate(sharded, tmp_path / "out")) == 0


def test_convert_of_a_text_file_says_it_is_not_a_checkpoint(tmp_path, capsys) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    fails(capsys, ["convert", notes, tmp_path / "out"], f"{notes} is not a torch checkpoint")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ 12. earlier stages
def test_earlier_stages_only_with_the_tiny_default(tmp_path, capsys) -> None:
    from layerflow.training.config import TINY_CONFIG

    argv = ["--stage", "3", "--earlier-stages", "--config", str(TINY_CONFIG), "--output-root", str(tmp_path)]
    assert train_main(argv) == 2
    assert "--earlier-stages runs only with the tiny built-in config" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_conditions_from_files_round_trip(saved, tmp_path) -> None:
    """Control: a valid condition clip passes every check above and generates."""
    frames = random_layer_frames(LayerLayout.official())["background"]
    write_png_sequence(tmp_path / "bg", frames)
    argv = ["bg2fg", saved, "-o", tmp_path / "out", *PROMPTS, "-i", f"background={tmp_path / 'bg'}", *FAST]
    assert main([str(a) for a in argv]) == 0
