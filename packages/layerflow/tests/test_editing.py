"""Recomposition and layer replacement on synthetic clips with exact layers; bad inputs; the eval check."""

import json

import pytest
import torch
from PIL import Image

from layerflow.editing import (
    EditError,
    Placement,
    Replacement,
    alpha_over,
    recompose,
    recomposition_check,
)
from layerflow.media import (
    OutputLayer,
    read_layer,
    read_manifest,
    read_png_sequence,
    read_video,
    write_output_dir,
    write_png_sequence,
    write_prores_rgba,
)
from layerflow.metrics import evaluate_output_dir
from layerflow.synthetic import SyntheticConfig, SyntheticGenerator

CONFIG = SyntheticConfig(num_frames=8, height=32, width=48)


def _quantised(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def _sample(seed):
    return SyntheticGenerator(CONFIG).generate(seed=seed)


def _ground_truth_folder(path, sample, **options):
    """The sample's exact layers as a decompose output folder (PNG only: lossless)."""
    layers = [
        OutputLayer("foreground", "foreground", torch.cat([sample.foreground, sample.alpha], 1), "a shape"),
        OutputLayer("background", "background", sample.background, "a field"),
        OutputLayer("composite", "composite", sample.composite),
    ]
    return write_output_dir(path, layers, task="decompose", formats=["png"], previews=False, **options)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return _ground_truth_folder(tmp_path_factory.mktemp("gt") / "out", _sample(7))


def test_alpha_over_matches_the_hand_computed_stack():
    back = torch.full((1, 3, 1, 1), 0.2)
    middle = torch.tensor([0.0, 1.0, 0.0, 0.5]).view(1, 4, 1, 1)
    front = torch.tensor([1.0, 0.0, 0.0, 0.25]).view(1, 4, 1, 1)
    # green at 0.5 over grey 0.2 -> (0.1, 0.6, 0.1); red at 0.25 over that -> (0.325, 0.45, 0.075)
    expected = torch.tensor([0.325, 0.45, 0.075]).view(1, 3, 1, 1)
    assert torch.allclose(alpha_over([front, middle, back]), expected, atol=1e-7)


def test_ground_truth_layers_recompose_to_their_composite(source, tmp_path):
    composite = read_png_sequence(source / "composite", "rgb")
    per_frame = recomposition_check(source)
    assert len(per_frame) == CONFIG.num_frames and max(per_frame) <= 0.5 / 255  # 8-bit rounding only
    out = recompose(source, tmp_path / "new", formats=["png"])
    assert torch.equal(read_png_sequence(out / "composite", "rgb"), composite)
    manifest = read_manifest(out)
    assert manifest.task == "recompose" and manifest.depth == ("foreground", "background")
    assert manifest.names == ["foreground", "background", "composite"]
    assert manifest.summary == (
        f"foreground: kept from {source}; background: kept from {source}; "
        "composite: recomposed: foreground over background (straight-alpha over, front to back)"
    )
    assert manifest.layers[0].prompt == "a shape"  # nothing replaced: prompts still describe the layers


def test_replacing_the_background_by_another_clip_is_the_manual_composite(source, tmp_path):
    other = _sample(11)
    write_png_sequence(tmp_path / "bg2", other.background)
    out = recompose(source, tmp_path / "new", [Replacement.from_path("background", tmp_path / "bg2")])
    fg = read_png_sequence(source / "foreground", "rgba")
    manual = _quantised(fg[:, 3:] * fg[:, :3] + (1 - fg[:, 3:]) * other.background)
    assert torch.equal(read_png_sequence(out / "composite", "rgb"), manual)
    layers = {layer.name: layer for layer in read_manifest(out).layers}
    assert layers["background"].source == f"replaced by {tmp_path / 'bg2'}"
    assert layers["background"].prompt is None and layers["composite"].prompt is None
    assert layers["foreground"].prompt == "a shape"


def test_a_prores_foreground_replaces_the_foreground(source, tmp_path):
    other = _sample(12)
    rgba = torch.cat([other.foreground, other.alpha], 1)
    path = write_prores_rgba(tmp_path / "fg.mov", rgba)
    out = recompose(
        source, tmp_path / "new", [Replacement.from_path("foreground", path)], formats=["png", "prores"]
    )
    fg = read_video(path, "rgba")[0]  # what recompose composited: the decoded ProRes frames
    bg = read_png_sequence(source / "background", "rgb")
    manual = fg[:, 3:] * fg[:, :3] + (1 - fg[:, 3:]) * bg
    assert (read_png_sequence(out / "composite", "rgb") - manual).abs().max() <= 0.5 / 255 + 1e-6
    written = read_layer(out, read_manifest(out), "foreground")  # from the PNG folder
    assert torch.equal((written[:, 3] * 255).round(), (other.alpha[:, 0] * 255).round())  # exact alpha
    assert read_manifest(out).layers[0].files["prores"] == "foreground.mov"


def test_a_still_is_held_and_placed(source, tmp_path):
    still = torch.zeros(1, 4, 8, 8)
    still[:, 0] = still[:, 3] = 1.0  # an opaque red square
    Image.fromarray((still[0].permute(1, 2, 0) * 255).byte().numpy(), "RGBA").save(tmp_path / "logo.png")
    replacement = Replacement.from_path(
        "foreground", tmp_path / "logo.png", Placement(scale=2, offset=(4, 6))
    )
    out = recompose(source, tmp_path / "new", [replacement], formats=["png"])
    composite = read_png_sequence(out / "composite", "rgb")
    bg = read_png_sequence(source / "background", "rgb")
    inside = torch.zeros(32, 48, dtype=torch.bool)
    inside[6:22, 4:20] = True  # 16x16 at x=4, y=6
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1)
    assert torch.equal(composite[:, :, inside], red.expand(CONFIG.num_frames, 3, int(inside.sum())))
    assert torch.equal(composite[:, :, ~inside], bg[:, :, ~inside])
    assert "a still held for every frame" in str(read_manifest(out).summary)


def test_premultiplied_sources_recompose_like_straight_ones(tmp_path):
    sample = _sample(7)
    straight = _ground_truth_folder(tmp_path / "s", sample)
    premultiplied = _ground_truth_folder(tmp_path / "p", sample, alpha="premultiplied")
    a = recompose(straight, tmp_path / "a", formats=["png"])
    b = recompose(premultiplied, tmp_path / "b", formats=["png"], alpha="premultiplied")
    difference = read_png_sequence(a / "composite") - read_png_sequence(b / "composite")
    assert difference.abs().max() <= 1 / 255 + 1e-6
    assert json.loads((b / "manifest.json").read_text())["alpha"] == "premultiplied"


@pytest.mark.parametrize(
    ("layer", "make", "message"),
    [
        (
            "matte",
            lambda s: s.background,
            "no layer 'matte' in the manifest; it has ['foreground', 'background', 'composite']",
        ),
        ("composite", lambda s: s.composite, "'composite' is the composite that recomposition computes"),
        ("background", lambda s: s.background[:5], "has 5 frames, the clip has 8"),
        ("background", lambda s: s.background[..., :40], "is 40x32, the clip is 48x32"),
        ("foreground", lambda s: s.foreground, "has no alpha channel; a transparent layer needs RGBA"),
    ],
)
def test_bad_replacements_are_refused_before_anything_is_written(source, tmp_path, layer, make, message):
    write_png_sequence(tmp_path / "frames", make(_sample(11)))
    with pytest.raises(EditError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        recompose(source, tmp_path / "new", [Replacement.from_path(layer, tmp_path / "frames")])
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_eval_reports_recomposition_per_frame(tmp_path):
    sample = _sample(7)
    broken = sample.composite.clone()
    broken[3] = 1 - broken[3]  # one frame whose composite does not match its layers
    layers = [
        OutputLayer("foreground", "foreground", torch.cat([sample.foreground, sample.alpha], 1)),
        OutputLayer("background", "background", sample.background),
        OutputLayer("composite", "composite", broken),
    ]
    out = write_output_dir(tmp_path / "out", layers, task="generate", formats=["png"], previews=False)
    report = evaluate_output_dir(out)
    per_frame = report.per_frame["recomposition.mae"]
    expected = (sample.composite[3] - _quantised(1 - sample.composite[3])).abs().mean().item()
    assert per_frame[3] == pytest.approx(expected, abs=1e-3)
    assert max(per_frame[:3] + per_frame[4:]) <= 0.5 / 255
    assert report.metrics["recomposition.max_frame"] == per_frame[3]
    assert report.metrics["recomposition.mae"] == pytest.approx(sum(per_frame) / 8)
    assert "`recomposition.mae` per frame:" in report.to_markdown()


def test_edit_keeps_the_foreground_and_takes_the_pipelines_background():
    from layerflow.editing import edit
    from layerflow.testing import build_tiny_pipeline, single_thread

    sample = SyntheticGenerator(SyntheticConfig(num_frames=8, height=16, width=16)).generate(seed=5)
    kept = OutputLayer(
        "foreground", "foreground", torch.cat([sample.foreground, sample.alpha], 1), None, "given"
    )
    prompts = {
        "foreground": "a red circle",
        "background": "green dots",
        "composite": "a red circle on green dots",
    }
    with single_thread():
        pipe = build_tiny_pipeline()
        pipe.set_progress_bar_config(disable=True)
        layers = edit(
            pipe,
            [kept],
            "background",
            prompts,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(1),
        )
        direct = pipe(
            prompts,
            "foreground_to_background",
            conditions={"foreground": kept.frames},
            num_frames=8,
            height=16,
            width=16,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(1),
        )
    foreground, background, composite = layers
    assert foreground is kept
    assert torch.equal(background.frames, direct.layers["background"][0])  # the oracle: the stock task call
    assert background.source == "generated by foreground_to_background" and background.prompt == "green dots"
    alpha = kept.frames[:, 3:]
    manual = alpha * kept.frames[:, :3] + (1 - alpha) * background.frames
    assert composite.role == "composite" and torch.allclose(composite.frames, manual, atol=1e-6)
    assert composite.prompt == "a red circle on green dots"
    with pytest.raises(EditError, match="the kept foreground 'foreground' has no alpha channel"):
        edit(pipe, [OutputLayer("foreground", "foreground", sample.foreground)], "background", prompts)
