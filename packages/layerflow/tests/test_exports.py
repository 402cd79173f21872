"""Export formats: ProRes 4444 and WebM-alpha decode back to the written alpha; formats and the alpha flag
of output folders; version-1 folders still read."""

import json

import av
import pytest
import torch
from PIL import Image

from layerflow.media import (
    OutputLayer,
    parse_formats,
    read_layer,
    read_manifest,
    read_png_sequence,
    read_video,
    write_output_dir,
    write_prores_rgba,
    write_webm_rgba,
)
from layerflow.synthetic import SyntheticConfig, SyntheticGenerator

# Tolerances on the 0-255 scale, from measurements on 8 synthetic 16x64x64 clips (seeds 1000-1007):
# ProRes 4444 alpha max 0.31 (16-bit alpha plane, read at 16 bits), WebM VP9 alpha max 18, mean 0.09
# (max 26, mean 0.29 on the demo's 8x32x32 held-out clips).
PRORES_ALPHA_MAX = 0.5  # below half a level: exact after 8-bit rounding
WEBM_ALPHA_MAX, WEBM_ALPHA_MEAN = 32.0, 0.5


@pytest.fixture(scope="module")
def sample():
    return SyntheticGenerator(SyntheticConfig()).generate(seed=1003)


@pytest.fixture(scope="module")
def rgba(sample):
    return torch.cat([sample.foreground, sample.alpha], dim=1)


def test_prores_4444_keeps_the_alpha(tmp_path, rgba):
    path = write_prores_rgba(tmp_path / "fg.mov", rgba, fps=8)
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        assert context.name == "prores" and context.pix_fmt.startswith("yuva444p")
    decoded, fps = read_video(path)
    assert fps == 8 and decoded.shape == rgba.shape
    alpha_error = (decoded[:, 3] - rgba[:, 3]).abs() * 255
    assert alpha_error.max() <= PRORES_ALPHA_MAX
    assert torch.equal((decoded[:, 3] * 255).round(), (rgba[:, 3] * 255).round())
    premultiplied_error = (decoded[:, :3] * decoded[:, 3:] - rgba[:, :3] * rgba[:, 3:]).abs() * 255
    assert premultiplied_error.mean() < 0.5


def test_webm_alpha_stays_within_the_stated_tolerance(tmp_path, rgba):
    decoded, _ = read_video(write_webm_rgba(tmp_path / "fg.webm", rgba))
    alpha_error = (decoded[:, 3] - rgba[:, 3]).abs() * 255
    assert alpha_error.max() <= WEBM_ALPHA_MAX and alpha_error.mean() <= WEBM_ALPHA_MEAN


def test_every_format_for_every_layer_it_can_hold(tmp_path, sample, rgba):
    layers = [
        OutputLayer("foreground", "foreground", rgba),
        OutputLayer("background", "background", sample.background),
    ]
    out = write_output_dir(
        tmp_path / "out", layers, task="generate", formats=parse_formats("png,webm,prores,mp4")
    )
    manifest = read_manifest(out)
    assert manifest.layers[0].files == {
        "png": "foreground",
        "webm": "foreground.webm",
        "prores": "foreground.mov",
    }
    assert manifest.layers[1].files["mp4"] == "background.mp4"
    for layer in manifest.layers:
        for path in layer.files.values():
            assert (out / path).exists()
    with pytest.raises(ValueError, match="'foreground' is transparent and formats mp4 cannot hold alpha"):
        write_output_dir(tmp_path / "mp4", layers, task="generate", formats=["mp4"])
    assert not (tmp_path / "mp4").exists()
    with pytest.raises(ValueError, match=r"unknown output format\(s\) \['gif'\]"):
        parse_formats("png,gif")


def test_a_layer_is_read_from_its_video_when_there_is_no_png(tmp_path, rgba):
    out = write_output_dir(
        tmp_path / "out", [OutputLayer("foreground", "foreground", rgba)], task="generate", formats=["prores"]
    )
    manifest = read_manifest(out)
    frames = read_layer(out, manifest, "foreground")
    assert torch.equal((frames[:, 3] * 255).round(), (rgba[:, 3] * 255).round())
    with pytest.raises(KeyError, match="no layer 'matte' in the manifest; it has \\['foreground'\\]"):
        read_layer(out, manifest, "matte")


def test_premultiplied_folders_store_colour_times_alpha_and_read_back_straight(tmp_path, rgba):
    layers = [OutputLayer("foreground", "foreground", rgba)]
    out = write_output_dir(tmp_path / "out", layers, task="generate", formats=["png"], alpha="premultiplied")
    manifest = read_manifest(out)
    assert manifest.alpha == "premultiplied"
    stored = read_png_sequence(out / "foreground", "rgba")
    expected = torch.cat([rgba[:, :3] * rgba[:, 3:], rgba[:, 3:]], dim=1)
    assert (stored - expected).abs().max() <= 0.5 / 255 + 1e-6
    straight = read_layer(out, manifest, "foreground")
    assert torch.equal(straight[:, 3], rgba[:, 3])
    # Colour comes back to within the 8-bit step of the premultiplied value, divided by alpha.
    visible = rgba[:, 3:] > 0
    error = ((straight[:, :3] - rgba[:, :3]).abs() * rgba[:, 3:])[visible.expand(-1, 3, -1, -1)]
    assert error.max() <= 0.5 / 255 + 1e-6


def test_version_1_folders_still_read(tmp_path, rgba):
    folder = tmp_path / "v1"
    (folder / "foreground").mkdir(parents=True)
    for index, frame in enumerate((rgba[:2] * 255).round().byte().permute(0, 2, 3, 1).numpy()):
        Image.fromarray(frame, "RGBA").save(folder / "foreground" / f"{index:04d}.png")
    manifest = {
        "format": "layerflow-output",
        "version": 1,
        "task": "generate",
        "fps": 8,
        "num_frames": 2,
        "height": 64,
        "width": 64,
        "alpha": "straight",
        "layers": [
            {
                "name": "foreground",
                "role": "foreground",
                "kind": "rgba",
                "frames": "foreground",
                "video": "foreground.webm",
            }
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    read = read_manifest(folder)
    assert read.layers[0].files == {"png": "foreground", "webm": "foreground.webm"}
    assert read.depth == ("foreground",)
    assert torch.equal(read_layer(folder, read, "foreground"), rgba[:2])
