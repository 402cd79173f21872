"""``evaluate_output_dir`` on output directories in the contract format, with and without a reference."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from layerflow.metrics import EvaluationReport, evaluate_output_dir, summarize
from layerflow.metrics.adherence import check_adherence, foreground_shape
from layerflow.synthetic import SHAPES, SyntheticConfig, SyntheticGenerator
from layerflow.synthetic.writers import write_simple_sample

CONFIG = SyntheticConfig(num_frames=6, height=40, width=48)
GENERATOR = SyntheticGenerator(CONFIG)


def _save(folder, frames: torch.Tensor, mode: str) -> None:
    folder.mkdir(parents=True)
    data = (frames.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for t, frame in enumerate(data):
        Image.fromarray(frame, mode=mode).save(folder / f"{t:04d}.png")


def write_output_dir(root, task, foreground, alpha, background, composite, prompts):
    """A pipeline output directory exactly as the contract describes (no videos, no previews)."""
    layers = []
    for role, kind in (("foreground", "rgba"), ("background", "rgb"), ("composite", "rgb")):
        layers.append(
            {"name": role, "role": role, "kind": kind, "frames": role, "prompt": prompts.get(role, "")}
        )
    t, _, h, w = composite.shape
    manifest = {
        "format": "layerflow-output",
        "version": 1,
        "task": task,
        "fps": 8,
        "num_frames": t,
        "height": h,
        "width": w,
        "alpha": "straight",
        "layers": layers,
        "seed": 0,
        "settings": {},
    }
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    _save(root / "foreground", torch.cat([foreground, alpha], dim=1), "RGBA")
    _save(root / "background", background, "RGB")
    _save(root / "composite", composite, "RGB")
    return root


def _output_from_sample(root, sample, task="generate"):
    return write_output_dir(
        root, task, sample.foreground, sample.alpha, sample.background, sample.composite, sample.prompts
    )


def test_ground_truth_layers_score_perfectly(tmp_path):
    sample = GENERATOR.generate(4, "s")
    output = _output_from_sample(tmp_path / "out", sample, task="decompose")
    reference = write_simple_sample(sample, tmp_path / "ref")
    report = evaluate_output_dir(output, reference=reference)
    m = report.metrics
    assert m["recomposition.mae"] <= 0.5 / 255  # only the composite PNG's own rounding
    for name in (
        "alpha.sad",
        "alpha.mse",
        "alpha.gradient",
        "alpha.connectivity",
        "alpha.dtssd",
        "foreground.mae",
        "background.mae",
    ):
        assert m[name] == 0.0, name
    assert m["alpha.iou"] == 1.0
    assert m["flicker.background"] == m["flicker.background.reference"]
    assert [c.attribute for c in report.adherence] == [
        "foreground_colour",
        "foreground_shape",
        "background_colour",
    ]
    assert all(c.match for c in report.adherence)


def test_errors_are_measured(tmp_path):
    sample = GENERATOR.generate(5, "s")
    reference = write_simple_sample(sample, tmp_path / "ref")
    shifted_alpha = torch.roll(sample.alpha, shifts=3, dims=3)
    wrong_bg = torch.zeros_like(sample.background)
    output = write_output_dir(
        tmp_path / "out",
        "decompose",
        sample.foreground,
        shifted_alpha,
        wrong_bg,
        sample.composite,
        sample.prompts,
    )
    m = evaluate_output_dir(output, reference=reference).metrics
    assert (
        m["alpha.sad"] > 0 and m["alpha.mse"] > 0 and m["alpha.gradient"] > 0 and m["alpha.connectivity"] > 0
    )
    assert m["alpha.iou"] < 0.9 and m["background.mae"] > 0.1
    # The layers no longer explain the composite.
    assert m["recomposition.mae"] > 0.05


def test_prompt_adherence_catches_wrong_colour_and_shape(tmp_path):
    attributes = GENERATOR.sample_attributes(6)
    fg = replace(
        attributes.foreground, colour="red", shape="circle", texture="plain", motion="still", direction=None
    )
    bg = replace(attributes.background, colour="blue")
    asked = replace(attributes, foreground=fg, background=bg)
    drawn = GENERATOR.render(replace(asked, foreground=replace(fg, colour="green", shape="square")))
    output = write_output_dir(
        tmp_path / "out",
        "generate",
        drawn.foreground,
        drawn.alpha,
        drawn.background,
        drawn.composite,
        asked.captions(),
    )
    checks = {c.attribute: c for c in evaluate_output_dir(output).adherence}
    assert (checks["foreground_colour"].expected, checks["foreground_colour"].measured) == ("red", "green")
    assert (checks["foreground_shape"].expected, checks["foreground_shape"].measured) == ("circle", "square")
    assert checks["background_colour"].match


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_classifier_recognises_every_shape_at_any_angle(shape):
    attributes = GENERATOR.sample_attributes(9)
    for angle in (0.0, 0.5, 1.3):
        fg = replace(
            attributes.foreground, shape=shape, size="large", angle=angle, motion="still", center=(24.0, 20.0)
        )
        alpha = GENERATOR.render(replace(attributes, foreground=fg)).alpha
        assert foreground_shape(alpha) == shape


def test_real_prompts_give_no_adherence_checks():
    sample = GENERATOR.generate(1)
    assert (
        check_adherence(
            {"foreground": "a golden retriever"}, sample.foreground, sample.alpha, sample.background
        )
        == []
    )


def test_generate_task_has_no_ground_truth_comparisons(tmp_path):
    sample = GENERATOR.generate(2, "s")
    output = _output_from_sample(tmp_path / "out", sample)
    report = evaluate_output_dir(output, reference=write_simple_sample(sample, tmp_path / "ref"))
    assert not any(name.startswith("alpha.") for name in report.metrics)
    assert any("generates every layer freely" in note for note in report.notes)


def test_condition_fidelity_for_foreground_to_background(tmp_path):
    sample = GENERATOR.generate(3, "s")
    output = _output_from_sample(tmp_path / "out", sample, task="foreground_to_background")
    report = evaluate_output_dir(output, reference=write_simple_sample(sample, tmp_path / "ref"))
    assert report.metrics["alpha.iou"] == 1.0 and "background.mae" not in report.metrics


def test_report_renders_json_and_markdown_and_saves(tmp_path):
    sample = GENERATOR.generate(4, "s")
    report = evaluate_output_dir(_output_from_sample(tmp_path / "out", sample))
    data = json.loads(report.to_json())
    assert (
        data["task"] == "generate"
        and data["metrics"]["recomposition.mae"] == report.metrics["recomposition.mae"]
    )
    assert {"attribute", "expected", "measured", "match"} <= set(data["adherence"][0])
    markdown = report.to_markdown()
    assert "| `recomposition.mae` |" in markdown and "foreground_colour" in markdown
    json_path, md_path = report.save(tmp_path / "report")
    assert json.loads(json_path.read_text()) == data and md_path.read_text() == markdown


def test_summary_means_rates_and_targets():
    one = EvaluationReport("a", "generate", None, {"recomposition.mae": 0.02, "alpha.iou": 0.9})
    two = EvaluationReport("b", "generate", None, {"recomposition.mae": 0.08})
    from layerflow.metrics import AdherenceCheck

    one.adherence = [AdherenceCheck("foreground_colour", "red", "red")]
    two.adherence = [AdherenceCheck("foreground_colour", "red", "blue")]
    summary = summarize([one, two])
    assert summary.means == {"recomposition.mae": pytest.approx(0.05), "alpha.iou": 0.9}
    assert summary.counts == {"recomposition.mae": 2, "alpha.iou": 1}
    assert summary.adherence == {"foreground_colour": 0.5}
    targets = summary.to_dict()["targets"]
    assert targets["recomposition.mae"]["met"] is True and targets["alpha.iou"]["met"] is True
    assert targets["adherence.foreground_colour"]["met"] is False
    assert "| `alpha.iou` | 0.9000 | >= 0.8 | yes |" in summary.to_markdown()
    with pytest.raises(ValueError, match="at least one report"):
        summarize([])


def test_bad_directories_fail_with_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        evaluate_output_dir(tmp_path)
    sample = GENERATOR.generate(4, "s")
    output = _output_from_sample(tmp_path / "out", sample)
    manifest = json.loads((output / "manifest.json").read_text())
    (output / "manifest.json").write_text(json.dumps({**manifest, "task": "paint"}))
    with pytest.raises(ValueError, match="unknown task 'paint'"):
        evaluate_output_dir(output)
    (output / "manifest.json").write_text(json.dumps({**manifest, "num_frames": 99}))
    with pytest.raises(ValueError, match="manifest declares"):
        evaluate_output_dir(output)
    (output / "manifest.json").write_text(json.dumps(manifest))
    (output / "foreground" / "0002.png").unlink()
    with pytest.raises(ValueError, match="without gaps"):
        evaluate_output_dir(output)


def test_reference_must_match_and_use_frame_folders(tmp_path):
    sample = GENERATOR.generate(4, "s")
    output = _output_from_sample(tmp_path / "out", sample, task="decompose")
    small = SyntheticGenerator(replace(CONFIG, num_frames=3)).generate(4, "small")
    with pytest.raises(ValueError, match="frames, height, width"):
        evaluate_output_dir(output, reference=write_simple_sample(small, tmp_path / "ref"))
    with pytest.raises(FileNotFoundError, match="prompts.json is missing"):
        evaluate_output_dir(output, reference=tmp_path / "ref")
    video_ref = tmp_path / "video_ref"
    video_ref.mkdir()
    (video_ref / "prompts.json").write_text(json.dumps(sample.prompts))
    (video_ref / "foreground.webm").write_bytes(b"")
    with pytest.raises(ValueError, match="is a video file"):
        evaluate_output_dir(output, reference=video_ref)


def test_rgb_foreground_png_is_refused(tmp_path):
    sample = GENERATOR.generate(4, "s")
    output = _output_from_sample(tmp_path / "out", sample)
    frame = np.asarray(Image.open(output / "foreground" / "0000.png").convert("RGB"))
    Image.fromarray(frame).save(output / "foreground" / "0000.png")
    with pytest.raises(ValueError, match="no alpha channel"):
        evaluate_output_dir(output)
