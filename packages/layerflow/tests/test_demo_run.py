"""The demo in reduced-steps mode: every promised file, and report numbers from the metric functions."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX
from PIL import Image

from layerflow.demo import DemoSettings, main, run_demo
from layerflow.demo.animate import ROWS as ANIMATE_ROWS
from layerflow.demo.animate import motion_matches
from layerflow.demo.animate import score as animate_score
from layerflow.demo.assets import VaeCeilingError, _clip_pool, measure_ceiling
from layerflow.demo.diagnostics import encode_heldout, x0_errors
from layerflow.demo.report import (
    PREVIEW_FILE,
    PREVIEW_SCALE,
    ROUND_TRIP_DIR,
    TARGET_TASKS,
    _budget_evidence,
    _stage1_trend,
    sampling_sentence,
)
from layerflow.demo.run import TASKS
from layerflow.media import read_manifest, read_png_sequence
from layerflow.metrics import (
    TARGETS,
    evaluate_output_dir,
    read_reference_sample,
    recomposition_error,
    summarize,
)
from layerflow.pipelines import LayerFlowPipeline
from layerflow.tiny import torch_threads


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo")
    out, cache = root / "out", root / "cache"
    with torch.random.fork_rng():
        status = main(["--quick", "--output-dir", str(out), "--cache-dir", str(cache), "--no-progress"])
    assert status == 0
    return out, cache


def test_writes_every_promised_file(demo_run: tuple[Path, Path]) -> None:
    out, _ = demo_run
    assert (out / "report.md").is_file() and (out / "report.json").is_file()
    heldout = sorted(p.name for p in (out / "data" / "heldout").iterdir() if p.is_dir())
    assert len(heldout) == DemoSettings.quick().num_heldout
    frames = DemoSettings.quick().assets.num_frames
    for task in TASKS:
        assert sorted(p.name for p in (out / task).iterdir()) == heldout
        for sample in heldout:
            folder = out / task / sample
            manifest = json.loads((folder / "manifest.json").read_text())
            assert manifest["task"] == task and manifest["num_frames"] == frames
            assert manifest["settings"]["guidance_interval"] == list(DemoSettings.quick().guidance_interval)
            names = {layer["name"]: layer for layer in manifest["layers"]}
            assert set(names) == {"foreground", "background", "composite"}
            assert (folder / "foreground.webm").stat().st_size > 0
            assert (folder / "preview.png").stat().st_size > 0
            for root in (out, out / "base"):  # enlarged previews, trained and base
                with Image.open(root / task / sample / PREVIEW_FILE) as preview:
                    assert preview.width > 4 * PREVIEW_SCALE * DemoSettings.quick().assets.width
            for name, layer in names.items():
                pngs = sorted((folder / layer["files"]["png"]).glob("*.png"))
                assert len(pngs) == frames, (task, sample, name)
            assert read_png_sequence(folder / "foreground").shape[1] == 4  # straight RGBA
    for stage in (1, 2, 3):
        assert (out / "train" / f"stage{stage}" / "final" / "pipeline" / "model_index.json").is_file()
    markdown = (out / "report.md").read_text()
    for task in TASKS:
        assert f"({task}/{heldout[0]}/{PREVIEW_FILE})" in markdown
        assert f"(base/{task}/{heldout[0]}/{PREVIEW_FILE})" in markdown
    with Image.open(out / "loss_curves.png") as plot:
        assert plot.width >= 4 * 300  # VAE and three stages
    assert "![loss curves](loss_curves.png)" in markdown
    for section in ("## The VAE ceiling", "## The pretrained video base", "## Teacher-forced diagnostics"):
        assert section in markdown
    quick = DemoSettings.quick()
    assert f"Sampling: {quick.inference_steps} DPM++ steps, classifier-free guidance" in markdown


def test_report_numbers_are_finite_and_come_from_the_metrics(demo_run: tuple[Path, Path]) -> None:
    out, _ = demo_run
    report = json.loads((out / "report.json").read_text())
    heldout = out / "data" / "heldout"
    recomputed = {}
    for task in TASKS:
        reports = [
            evaluate_output_dir(folder, heldout / folder.name) for folder in sorted((out / task).iterdir())
        ]
        recomputed[task] = reports
        stored = report["tasks"][task]["samples"]
        assert [r.to_dict()["metrics"] for r in reports] == [s["metrics"] for s in stored]
        assert all(math.isfinite(v) for s in stored for v in s["metrics"].values())
    # The recomposition figure is the plain formula on the written PNGs.
    folder = sorted((out / "generate").iterdir())[0]
    rgba = read_png_sequence(folder / "foreground")
    direct = recomposition_error(
        read_png_sequence(folder / "composite"),
        rgba[:, :3],
        rgba[:, 3:],
        read_png_sequence(folder / "background"),
    )
    assert report["tasks"]["generate"]["samples"][0]["metrics"]["recomposition.mae"] == pytest.approx(direct)
    assert [row["metric"] for row in report["targets"]] == list(TARGETS)
    for row in report["targets"]:
        expected = summarize([r for t in TARGET_TASKS[row["metric"]] for r in recomputed[t]]).value(
            row["metric"]
        )
        assert row["measured"] == pytest.approx(expected)
        assert math.isfinite(row["measured"]) and math.isfinite(row["base"])
    cross = [row for row in report["targets"] if row["metric"] == "consistency.cross_layer"][0]
    assert cross["tasks"] == list(TASKS) and 0.5 < cross["truth"] <= 1.0  # the held-out layers agree
    for stage in ("1", "2", "3"):
        entry = report["training"][stage]
        assert entry["steps"] == DemoSettings.quick().stage_steps[int(stage) - 1]
        assert all(math.isfinite(v) for v in entry["losses"])


def test_report_ceiling_and_diagnostics_are_recomputed(demo_run: tuple[Path, Path]) -> None:
    out, _ = demo_run
    report = json.loads((out / "report.json").read_text())
    ceiling = report["vae_ceiling"]
    assert set(ceiling["checks"]) == {"alpha_iou", "composite_mae"}
    assert ceiling["checks"]["composite_mae"]["measured"] == ceiling["mae"]["composite"]
    assert len(report["vae_losses"]) == DemoSettings.quick().assets.vae_steps
    config = DemoSettings.quick().assets
    vae = AutoencoderKLCogVideoX.from_pretrained(Path(report["assets"]["directory"]) / "vae")
    again = measure_ceiling(vae, _clip_pool(config, config.vae_eval_samples, stream=1))
    assert again["alpha_iou"] == pytest.approx(ceiling["alpha_iou"], rel=1e-5)
    assert again["mae"] == pytest.approx(ceiling["mae"], rel=1e-5)
    samples = sorted(p for p in (out / "data" / "heldout").iterdir() if p.is_dir())
    pipelines = {
        "base": LayerFlowPipeline.from_pretrained(out / "train" / "base"),
        "trained": LayerFlowPipeline.from_pretrained(out / "train" / "stage3" / "final" / "pipeline"),
    }
    # The targets' VAE round trip: the truth through stock ``vae.encode(...).mode()`` / ``vae.decode``,
    # scored like the models' outputs.
    with Image.open(out / ROUND_TRIP_DIR / PREVIEW_FILE) as preview:
        assert preview.height > 4 * PREVIEW_SCALE * config.height
    rows = {row["metric"]: row for row in report["targets"]}
    reports = [evaluate_output_dir(out / ROUND_TRIP_DIR / s.name, s) for s in samples]
    for name, row in rows.items():
        assert row["vae_round_trip"] == pytest.approx(summarize(reports).value(name)), name
    vae = pipelines["base"].vae
    truth = read_reference_sample(samples[0]).composite
    assert truth is not None
    with torch.no_grad():
        stock = vae.decode(vae.encode(truth.permute(1, 0, 2, 3)[None] * 2 - 1).latent_dist.mode()).sample
    stock = ((stock[0].permute(1, 0, 2, 3).clamp(-1, 1) + 1) / 2 * 255).round() / 255
    written = read_png_sequence(out / ROUND_TRIP_DIR / samples[0].name / "composite", "rgb")
    assert (written - stock).abs().max() <= 1.01 / 255
    for label, pipeline in pipelines.items():
        again = x0_errors(pipeline, encode_heldout(pipeline, samples), seed=DemoSettings.quick().seed)
        stored = report["diagnostics"][label]
        for prompts in ("correct", "shuffled"):
            assert stored[prompts] == pytest.approx(again[prompts], rel=1e-5), (label, prompts)


def test_a_strict_ceiling_stops_an_untrained_vae_before_training(
    demo_run: tuple[Path, Path], tmp_path: Path
) -> None:
    _, cache = demo_run  # the quick run's cached VAE: 3 training steps, far below its ceiling
    settings = replace(DemoSettings.quick(), check_vae_ceiling=True)
    with pytest.raises(VaeCeilingError, match=r"alpha_iou = .*goal >= 0\.95"):
        run_demo(settings, tmp_path / "out", cache, progress=False)
    assert not (tmp_path / "out" / "train").exists()


def test_animate_rows_are_written_and_scored(demo_run: tuple[Path, Path]) -> None:
    out, _ = demo_run
    report = json.loads((out / "report.json").read_text())
    samples = sorted(p for p in (out / "data" / "heldout").iterdir() if p.is_dir())
    assert list(report["animate"]) == list(ANIMATE_ROWS)
    for label, row in report["animate"].items():
        again = [animate_score(out / row["folder"] / s.name, s) for s in samples]
        assert row["samples"] == again, label  # the report's numbers are the metric functions'
        for sample in samples:
            folder = out / row["folder"] / sample.name
            manifest = read_manifest(folder)
            assert manifest.task == "animate" and manifest.settings["first_frames"] == ["foreground"]
            assert manifest.settings["first_frame_mode"] == ANIMATE_ROWS[label][1]
            assert manifest.settings["guidance_interval"] == list(DemoSettings.quick().guidance_interval)
            assert (folder / PREVIEW_FILE).is_file()
    stage3 = LayerFlowPipeline.load_config(out / "train" / "stage3" / "final" / "pipeline")
    assert "animate" in stage3["layout"]["tasks"]  # stage 3 trained the task: its own splice runs


def _disc_path(shift: tuple[int, int], frames: int = 4, size: int = 32) -> torch.Tensor:
    """An alpha clip of a disc whose centre moves by ``shift`` pixels per frame (x, y)."""
    yy, xx = torch.meshgrid(torch.arange(size) * 1.0, torch.arange(size) * 1.0, indexing="ij")
    clips = []
    for t in range(frames):
        cx, cy = 16 + shift[0] * t, 16 + shift[1] * t
        clips.append((((xx - cx) ** 2 + (yy - cy) ** 2) < 36).float()[None])
    return torch.stack(clips)


@pytest.mark.parametrize(
    ("shift", "caption", "expected"),
    [
        ((2, 0), "a large red circle moving right", 1.0),
        ((-2, 0), "a large red circle moving right", 0.0),
        ((0, -2), "a large red circle moving up", 1.0),
        ((0, 0), "a large red circle", 1.0),  # still: no motion words
        ((2, 0), "a large red circle", 0.0),
        ((2, 0), "a large red circle spinning", None),  # a motion the centroid cannot judge
    ],
)
def test_motion_matches_the_caption(shift, caption, expected) -> None:
    assert motion_matches(_disc_path(shift), caption) == expected


def test_a_run_holds_its_thread_count_and_gives_the_callers_back(demo_run: tuple[Path, Path]) -> None:
    """The thread count is the settings' (it decides the numbers), and the caller's is restored."""
    out, _ = demo_run
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["num_threads"] == DemoSettings.quick().num_threads
    caller = torch.get_num_threads()
    with torch_threads(caller + 1):
        assert torch.get_num_threads() == caller + 1
    assert torch.get_num_threads() == caller
    with pytest.raises(ValueError, match="count >= 1, got 0"):
        torch_threads(0).__enter__()


def test_stage1_trains_its_own_task_mix_and_stages_2_3_every_task_alike(tmp_path: Path) -> None:
    from layerflow.demo.run import STAGE1_TASKS, stage_overrides
    from layerflow.training import load_config

    settings = DemoSettings.quick()
    configs = {
        stage: load_config(None, stage, stage_overrides(settings, stage, tmp_path, tmp_path, tmp_path, False))
        for stage in (1, 2, 3)
    }
    assert dict(configs[1].objective.tasks) == dict(STAGE1_TASKS)
    assert STAGE1_TASKS["decompose"] > STAGE1_TASKS["generate"] > STAGE1_TASKS["foreground_to_background"]
    assert dict(configs[2].objective.tasks) == {task: 0.25 for task in TASKS}
    share = settings.animate_share
    assert dict(configs[3].objective.tasks) == {task: (1 - share) / 4 for task in TASKS} | {"animate": share}


def test_the_report_says_on_which_steps_guidance_ran() -> None:
    def sentence(interval: tuple[float, float], steps: int = 20) -> str:
        return sampling_sentence(
            {"inference_steps": steps, "guidance_scale": 3.0, "guidance_interval": interval}
        )

    assert "guidance 3 on steps 1-10 only (`guidance_interval` (0, 0.5))" in sentence((0.0, 0.5))
    assert "on steps 6-20 only" in sentence((0.25, 1.0))
    assert "on every step" in sentence((0.0, 1.0))
    assert "on no step" in sentence((0.0, 0.01))  # int(0.01 * 20) = 0: the pipeline guides no step


def test_the_budget_evidence_tells_a_falling_stage1_loss_from_a_flat_one() -> None:
    falling = [1.0] * 18 + [0.9, 0.9]  # the last tenth 10% below the tenth before
    flat = [1.0] * 18 + [1.01, 1.01]
    assert _stage1_trend(falling) == pytest.approx(0.1)
    assert "still 10.0% lower" in _budget_evidence(_stage1_trend(falling))
    assert "flat at the end of its cosine decay (+1.0%" in _budget_evidence(_stage1_trend(flat))
    assert _budget_evidence(_stage1_trend([1.0] * 5)) == "stage-1 loss trend n/a"
