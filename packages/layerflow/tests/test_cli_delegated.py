"""`layerflow eval`, `layerflow train` and `layerflow demo` through the console entry point."""

import json
import math

import pytest

from layerflow.cli import main
from layerflow.synthetic import SyntheticConfig, SyntheticGenerator
from layerflow.synthetic.writers import write_simple_sample
from layerflow.testing import build_tiny_pipeline, single_thread

FAST = ["--steps", "1", "--no-video", "--frames", "8", "--height", "16", "--width", "16"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    with single_thread():
        build_tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    sample = SyntheticGenerator(SyntheticConfig(num_frames=8, height=16, width=16)).generate(
        seed=3, sample_id="s3"
    )
    return write_simple_sample(sample, tmp_path_factory.mktemp("reference")), sample


def _finite_numbers(tree):
    if isinstance(tree, dict):
        return [x for value in tree.values() for x in _finite_numbers(value)]
    if isinstance(tree, list):
        return [x for value in tree for x in _finite_numbers(value)]
    return [tree] if isinstance(tree, float) else []


def test_eval_writes_a_report_for_a_decomposition(model_dir, reference, tmp_path, capsys):
    sample_dir, sample = reference
    out = tmp_path / "decomposed"
    prompts = [
        "-p",
        f"foreground={sample.prompts['foreground']}",
        "-p",
        f"background={sample.prompts['background']}",
    ]
    with single_thread():
        assert (
            main(
                [
                    "decompose",
                    str(model_dir),
                    "-o",
                    str(out),
                    "-i",
                    f"composite={sample_dir / 'composite'}",
                    *prompts,
                    *FAST,
                ]
            )
            == 0
        )
        assert (
            main(["eval", str(out), "--reference", str(sample_dir), "--report-dir", str(tmp_path / "report")])
            == 0
        )
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert (tmp_path / "report" / "metrics.md").read_text().strip() in printed
    numbers = _finite_numbers(report)
    assert numbers and all(math.isfinite(x) for x in numbers)
    assert "iou" in json.dumps(report).lower(), "a decomposition with a reference reports alpha IoU"


def test_eval_reports_a_missing_manifest(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "option"), [("train", "--stage"), ("demo", "--quick")])
def test_delegated_commands_own_their_options(command, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert option in out and f"layerflow {command}" in out
