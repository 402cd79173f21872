"""``layerflow generate --jobs FILE``: the videos split across 2 processes (the launcher's RANK/WORLD_SIZE),
each equal to the single command's video, a rerun skipping the finished ones; bad lines are one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from layerflow.cli import main
from layerflow.layout import LayerLayout
from layerflow.media import read_manifest, read_png_sequence, write_png_sequence
from layerflow.testing import build_tiny_pipeline, random_layer_frames, single_thread

PROMPTS = {
    "foreground": "a red circle",
    "background": "blue stripes",
    "composite": "a red circle over stripes",
}
FAST = ["--steps", "1", "--no-video", "--frames", "8"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    build_tiny_pipeline().save_pretrained(folder)
    return folder


def write_jobs(folder: Path, seeds: list[int]) -> Path:
    path = folder / "videos.jsonl"
    lines = [json.dumps({"output": f"out/video{seed}", "prompts": PROMPTS, "seed": seed}) for seed in seeds]
    path.write_text("\n".join(lines) + "\n")
    return path


def worker(rank: int, world_size: int, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    with single_thread():
        assert main(argv) == 0


def test_jobs_split_across_two_processes_and_a_rerun_skips_finished_ones(
    model_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, [1, 2, 3])
    argv = ["generate", str(model_dir), "--jobs", str(jobs), *FAST]
    mp.start_processes(worker, args=(2, argv), nprocs=2, start_method="fork")
    printed = capfd.readouterr().out
    assert "process 0 of 2: wrote 2 video(s)" in printed and "process 1 of 2: wrote 1 video(s)" in printed
    outputs = [tmp_path / "out" / f"video{seed}" for seed in (1, 2, 3)]
    assert all(read_manifest(folder).task == "generate" for folder in outputs)
    assert read_manifest(outputs[1]).settings["model"] == str(model_dir)  # loaded once, recorded per video
    # Oracle: the single command with the job's seed writes the same video.
    single = tmp_path / "single"
    prompts = [arg for name, text in PROMPTS.items() for arg in ("-p", f"{name}={text}")]
    with single_thread():
        assert main(["generate", str(model_dir), "-o", str(single), *prompts, *FAST, "--seed", "2"]) == 0
        for layer in PROMPTS:
            assert torch.equal(read_png_sequence(outputs[1] / layer), read_png_sequence(single / layer))
        assert not torch.equal(
            read_png_sequence(outputs[0] / "foreground"), read_png_sequence(single / "foreground")
        )
        written = {folder: (folder / "manifest.json").stat().st_mtime_ns for folder in outputs}
        capfd.readouterr()
        assert main(argv) == 0  # one process: every job finished, nothing rewritten
        assert "wrote 0 video(s), skipped 3 finished" in capfd.readouterr().out
        assert {folder: (folder / "manifest.json").stat().st_mtime_ns for folder in outputs} == written


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 2: not JSON"),
        ('{"prompts": {"foreground": "x"}}', "line 2: 'output' (the video's output folder) is required"),
        ('{"output": "a", "prompts": {}}', "line 2: 'prompts' needs one prompt"),
        ('{"output": "b", "prompts": {"foreground": "x"}, "steps": 3}', "line 2: unknown key(s) ['steps']"),
        ('{"output": "out/video1", "prompts": {"foreground": "x"}}', "is also line 1's"),
        (
            '{"output": "c", "prompts": {"foreground": "x"}, "inputs": {"foreground": "f.webm"}}',
            "inputs are not for generate (it takes no condition files)",
        ),
    ],
)
def test_a_bad_jobs_line_is_a_one_line_error(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    jobs = write_jobs(tmp_path, [1])
    jobs.write_text(jobs.read_text() + line + "\n")
    assert main(["generate", str(model_dir), "--jobs", str(jobs), *FAST]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith(f"layerflow: error: {jobs}")
    assert message in error, error
    assert not (tmp_path / "out").exists()


def test_jobs_replace_the_per_video_flags(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, [1])
    assert main(["generate", str(model_dir), "--jobs", str(jobs), "-o", str(tmp_path / "x")]) == 2
    assert "--jobs gives each video's -o: pass them in the jobs file" in capsys.readouterr().err
    assert main(["generate", str(model_dir), *FAST]) == 2
    assert "give -o/--output (or --jobs FILE for many videos)" in capsys.readouterr().err


def test_a_conditional_task_takes_each_jobs_inputs_relative_to_the_jobs_file(
    model_dir: Path, tmp_path: Path
) -> None:
    """decompose: a job's composite comes from its own ``inputs``, paths relative to the jobs file."""
    frames = random_layer_frames(LayerLayout.official())
    write_png_sequence(tmp_path / "clips" / "composite", frames["composite"])
    prompts = {name: PROMPTS[name] for name in ("foreground", "background")}
    job = {"output": "out/layers", "prompts": prompts, "inputs": {"composite": "clips/composite"}}
    (tmp_path / "decompose.jsonl").write_text(json.dumps(job) + "\n")
    with single_thread():
        assert main(["decompose", str(model_dir), "--jobs", str(tmp_path / "decompose.jsonl"), *FAST]) == 0
        single = tmp_path / "single"
        flags = [arg for name, text in prompts.items() for arg in ("-p", f"{name}={text}")]
        argv = [
            "decompose",
            str(model_dir),
            "-o",
            str(single),
            "-i",
            f"composite={tmp_path / 'clips' / 'composite'}",
        ]
        assert main([*argv, *flags, *FAST]) == 0
    for layer in ("foreground", "background"):
        assert torch.equal(
            read_png_sequence(tmp_path / "out" / "layers" / layer), read_png_sequence(single / layer)
        )


def test_animate_takes_each_jobs_first_frame_images(model_dir: Path, tmp_path: Path) -> None:
    cutout = random_layer_frames(LayerLayout.official(), num_frames=1)["foreground"]
    write_png_sequence(tmp_path / "cutout", cutout)
    job = {"output": "out/pup", "prompts": PROMPTS, "images": {"foreground": "cutout"}}
    (tmp_path / "animate.jsonl").write_text(json.dumps(job) + "\n")
    with single_thread():
        assert main(["animate", str(model_dir), "--jobs", str(tmp_path / "animate.jsonl"), *FAST]) == 0
        flags = [arg for name, text in PROMPTS.items() for arg in ("-p", f"{name}={text}")]
        single = [
            "animate",
            str(model_dir),
            "-o",
            str(tmp_path / "single"),
            "--image",
            f"foreground={tmp_path / 'cutout'}",
        ]
        assert main([*single, *flags, *FAST]) == 0
    for layer in PROMPTS:
        assert torch.equal(
            read_png_sequence(tmp_path / "out" / "pup" / layer),
            read_png_sequence(tmp_path / "single" / layer),
        )
