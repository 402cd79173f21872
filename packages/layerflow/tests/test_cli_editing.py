"""`layerflow recompose` and `layerflow edit` through the console entry point (fresh interpreters, files on
disk), and their one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from layerflow.cli import main
from layerflow.media import (
    OutputLayer,
    read_manifest,
    read_png_sequence,
    write_output_dir,
    write_png_sequence,
)
from layerflow.synthetic import SyntheticConfig, SyntheticGenerator
from layerflow.testing import build_tiny_pipeline, single_thread

CONFIG = SyntheticConfig(num_frames=8, height=16, width=16)
SAMPLING = ["--steps", "1", "--seed", "3"]


def layerflow(*argv, cwd=None):
    """Run the public entry point in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "layerflow.cli", *map(str, argv)], capture_output=True, text=True, cwd=cwd
    )


def _error_line(returncode, stderr):
    assert returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("layerflow: error: "), stderr
    return lines[0]


def fails(capsys, *argv):
    """Run ``layerflow ARGV`` in this process; it must fail with one error line, which is returned."""
    returncode = main(list(map(str, argv)))
    return _error_line(returncode, capsys.readouterr().err)


@pytest.fixture(scope="module")
def sample():
    return SyntheticGenerator(CONFIG).generate(seed=5)


@pytest.fixture(scope="module")
def decomposed(tmp_path_factory, sample):
    """A decompose-style output folder holding the sample's exact layers."""
    layers = [
        OutputLayer(
            "foreground", "foreground", torch.cat([sample.foreground, sample.alpha], 1), "a red circle"
        ),
        OutputLayer("background", "background", sample.background, "blue stripes"),
        OutputLayer("composite", "composite", sample.composite),
    ]
    return write_output_dir(
        tmp_path_factory.mktemp("src") / "decomposed", layers, task="decompose", formats=["png", "webm"]
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    with single_thread():
        build_tiny_pipeline().save_pretrained(folder)
    return folder


def test_recompose_journey_replaces_the_background(decomposed, sample, tmp_path):
    other = SyntheticGenerator(CONFIG).generate(seed=9)
    write_png_sequence(tmp_path / "new_bg", other.background)
    result = layerflow(
        "recompose", decomposed, "--replace", f"background={tmp_path / 'new_bg'}", "-o", tmp_path / "out",
        "--formats", "png,prores,webm",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {tmp_path / 'out'}"
    manifest = read_manifest(tmp_path / "out")
    assert manifest.task == "recompose" and manifest.formats == ("png", "prores", "webm")
    assert manifest.summary is not None and manifest.summary.startswith(
        f"foreground: kept from {decomposed}; background: replaced by "
    )
    alpha = sample.alpha
    manual = ((alpha * sample.foreground + (1 - alpha) * other.background) * 255).round() / 255
    assert torch.equal(read_png_sequence(tmp_path / "out" / "composite", "rgb"), manual)
    assert (tmp_path / "out" / "foreground.mov").is_file() and (tmp_path / "out" / "composite.mov").is_file()
    again = layerflow("recompose", decomposed, "-o", tmp_path / "out")  # an error in a fresh process too
    assert (
        again.returncode == 2
        and again.stderr == f"layerflow: error: output {tmp_path / 'out'} already exists (use --overwrite)\n"
    )


@pytest.mark.parametrize(
    ("replace", "frames", "message"),
    [
        (
            "sky",
            lambda s: s.background,
            "no layer 'sky' in the manifest; it has ['foreground', 'background', 'composite']",
        ),
        ("background", lambda s: s.background[:3], "has 3 frames, the clip has 8 (or give one still)"),
        ("foreground", lambda s: s.foreground, "has no alpha channel; a transparent layer needs RGBA frames"),
        ("background", lambda s: torch.rand(8, 3, 20, 16), "is 16x20, the clip is 16x16"),
    ],
)
def test_recompose_bad_inputs_are_one_line_errors(
    decomposed, sample, tmp_path, capsys, replace, frames, message
):
    write_png_sequence(tmp_path / "frames", frames(sample))
    argv = ("recompose", decomposed, "--replace", f"{replace}={tmp_path / 'frames'}", "-o", tmp_path / "out")
    assert message in fails(capsys, *argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]  # nothing written, no temporary left


def test_recompose_placement_flags(decomposed, sample, tmp_path, capsys):
    write_png_sequence(tmp_path / "fg", torch.cat([sample.foreground, sample.alpha], 1)[:1])
    replace = ("recompose", decomposed, "-o", tmp_path / "out", "--replace", f"foreground={tmp_path / 'fg'}")
    assert "expects a factor in (0, 16], got '0'" in fails(capsys, *replace, "--scale", "foreground=0")
    for huge in ("1e30", "inf", "nan"):
        assert f"expects a factor in (0, 16], got '{huge}'" in fails(
            capsys, *replace, "--scale", f"foreground={huge}"
        )
    assert "must be within +-8192 pixels, got '99999,0'" in fails(
        capsys, *replace, "--offset", "foreground=99999,0"
    )
    assert "expects X,Y in pixels, got '3'" in fails(capsys, *replace, "--offset", "foreground=3")
    assert "without a --replace for that layer" in fails(capsys, *replace, "--scale", "background=2")
    assert main([*map(str, replace), "--scale", "foreground=0.5", "--offset", "foreground=4,-2"]) == 0
    summary = read_manifest(tmp_path / "out").summary
    assert "(scale 0.5, offset 4,-2), a still held for every frame" in summary


def test_edit_keeps_the_foreground_and_regenerates_the_background(model_dir, decomposed, sample, tmp_path):
    prompts = ["-p", "background=green dots", "-p", "composite=a red circle over green dots"]
    result = layerflow("edit", model_dir, decomposed, "--regenerate", "background", "-o", tmp_path / "edited",
                       *prompts, "--formats", "png,prores", *SAMPLING)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "edited"
    manifest = read_manifest(out)
    layers = {layer.name: layer for layer in manifest.layers}
    assert manifest.task == "foreground_to_background" and manifest.seed == 3
    assert manifest.settings["steps"] == 1 and manifest.settings["edit"]["regenerate"] == "background"
    assert layers["foreground"].source == f"kept from {decomposed}"
    assert layers["foreground"].prompt == "a red circle"  # the kept layer keeps its prompt from the source
    assert layers["background"].source == "generated by foreground_to_background"
    assert layers["background"].prompt == "green dots"
    assert manifest.summary is not None
    assert (
        manifest.summary.count(";") == 2
        and "composite: recomposed: foreground over background" in manifest.summary
    )
    # The kept foreground is the source's, bit for bit; the composite is its exact recomposition.
    foreground = read_png_sequence(out / "foreground", "rgba")
    assert torch.equal(foreground, read_png_sequence(decomposed / "foreground", "rgba"))
    background = read_png_sequence(out / "background", "rgb")
    alpha = foreground[:, 3:]
    manual = ((alpha * foreground[:, :3] + (1 - alpha) * background) * 255).round() / 255
    assert (read_png_sequence(out / "composite", "rgb") - manual).abs().max() <= 1 / 255
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the scratch folder is gone
    evaluated = layerflow("eval", out)
    assert evaluated.returncode == 0, evaluated.stderr
    per_frame = json.loads((out / "metrics.json").read_text())["per_frame"]["recomposition.mae"]
    assert len(per_frame) == 8 and max(per_frame) <= 0.5 / 255


def test_edit_keeps_a_given_background_and_regenerates_the_foreground(model_dir, sample, tmp_path):
    write_png_sequence(tmp_path / "bg", sample.background)
    prompts = [
        "-p",
        "foreground=a green square",
        "-p",
        "background=blue stripes",
        "-p",
        "composite=a green square",
    ]
    result = layerflow("edit", model_dir, tmp_path / "bg", "--regenerate", "foreground", "-o", tmp_path / "edited",
                       *prompts, *SAMPLING)  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "edited")
    assert manifest.task == "background_to_foreground"
    layers = {layer.name: layer for layer in manifest.layers}
    assert layers["background"].source == f"given as {tmp_path / 'bg'}"
    assert (
        layers["foreground"].kind == "rgba"
        and layers["foreground"].source == "generated by background_to_foreground"
    )
    assert torch.equal(read_png_sequence(tmp_path / "edited" / "background"), sample.background)


def test_edit_bad_inputs_are_one_line_errors(model_dir, decomposed, sample, tmp_path, capsys):
    write_png_sequence(tmp_path / "rgb_fg", sample.foreground)
    edit = ("edit", model_dir, decomposed, "--regenerate", "background")
    prompts = ["-p", "background=green dots", "-p", "composite=a red circle over green dots"]
    no_alpha = fails(capsys, "edit", model_dir, tmp_path / "rgb_fg", "--regenerate", "background",
                     "-o", tmp_path / "a", *prompts, "-p", "foreground=a red circle", *SAMPLING)  # fmt: skip
    assert "the kept foreground 'foreground' has no alpha channel" in no_alpha
    missing = fails(capsys, *edit, "-o", tmp_path / "b", "-p", "background=green dots", *SAMPLING)
    assert "missing for layer(s) ['composite']" in missing
    assert "edit sets ['-i'] itself" in fails(
        capsys, *edit, "-o", tmp_path / "c", *prompts, "-i", "foreground=x"
    )
    assert "already exists (use --overwrite)" in fails(capsys, *edit, "-o", tmp_path / "rgb_fg", *prompts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb_fg"]  # nothing written, no scratch left
