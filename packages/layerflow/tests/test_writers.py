import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

from layerflow.media import (
    OutputLayer,
    contact_sheet,
    read_manifest,
    read_png_sequence,
    read_video,
    write_mp4,
    write_output_dir,
    write_png_sequence,
    write_webm_rgba,
)


def _quantized(frames: torch.Tensor) -> torch.Tensor:
    return (frames * 255).round() / 255


def _rgba(frames=4, height=32, width=48, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rgba = torch.rand(frames, 4, height, width, generator=g)
    rgba[:, 3] = torch.linspace(0, 1, width)  # a smooth ramp the lossy codec keeps
    return _quantized(rgba)


def _smooth_rgb(frames=4, height=32, width=48) -> torch.Tensor:
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    return torch.stack(
        [
            torch.stack([x.expand(height, width), y.expand(height, width), (x * y) + t / 10])
            for t in range(frames)
        ]
    ).clamp(0, 1)


def test_png_sequence_rgba_round_trip_is_exact(tmp_path):
    rgba = _rgba()
    write_png_sequence(tmp_path / "fg", rgba)
    assert sorted(p.name for p in (tmp_path / "fg").iterdir()) == [
        "0000.png",
        "0001.png",
        "0002.png",
        "0003.png",
    ]
    assert Image.open(tmp_path / "fg" / "0000.png").mode == "RGBA"
    assert torch.equal(read_png_sequence(tmp_path / "fg"), rgba)
    with pytest.raises(FileExistsError):
        write_png_sequence(tmp_path / "fg", rgba)


def test_png_reader_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no frames"):
        read_png_sequence(tmp_path / "empty")
    bad = tmp_path / "bad"
    write_png_sequence(bad, _rgba(frames=2))
    (bad / "0002.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read frame .*0002.png"):
        read_png_sequence(bad)
    mixed = tmp_path / "mixed"
    write_png_sequence(mixed, _rgba(frames=1))
    Image.new("RGB", (8, 8)).save(mixed / "0001.png")
    with pytest.raises(ValueError, match="different sizes"):
        read_png_sequence(mixed)


def test_webm_alpha_decodes_with_the_vp9_decoder(tmp_path):
    rgba = _rgba(frames=6)
    path = write_webm_rgba(tmp_path / "fg.webm", rgba, fps=8)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "vp9"
        native = next(container.decode(stream))
        assert not native.format.name.startswith("yuva")  # FFmpeg's native decoder drops the alpha
    decoded, fps = read_video(path)
    assert fps == 8 and decoded.shape == rgba.shape
    assert (decoded[:, 3] - rgba[:, 3]).abs().max() < 4 / 255


def test_mp4_round_trip(tmp_path):
    rgb = _smooth_rgb()
    decoded, _ = read_video(write_mp4(tmp_path / "bg.mp4", rgb))
    assert decoded.shape == rgb.shape and (decoded - rgb).abs().mean() < 0.02
    with pytest.raises(ValueError, match="RGB frames"):
        write_mp4(tmp_path / "x.mp4", _rgba())


def test_contact_sheet_shows_alpha_over_a_checkerboard():
    rgba = torch.zeros(2, 4, 16, 16)
    rgba[:, 0] = 1.0
    rgba[:, 3, :, 8:] = 1.0  # right half opaque red, left half transparent
    sheet = contact_sheet([rgba, torch.ones(2, 3, 16, 16)], columns=2, gap=2)
    assert sheet.shape == (3, 34, 34)
    assert torch.equal(sheet[:, 0, 8], torch.tensor([1.0, 0.0, 0.0]))
    left = sheet[:, :16, :8]
    assert set(left[1].unique().tolist()) == {0.6000000238418579, 0.800000011920929}  # the checkerboard


def test_output_dir_matches_the_contract(tmp_path):
    layers = [
        OutputLayer("foreground", "foreground", _rgba(), "a red circle"),
        OutputLayer("background", "background", _smooth_rgb(), "blue stripes"),
        OutputLayer("composite", "composite", _smooth_rgb(), None),
    ]
    out = write_output_dir(tmp_path / "out", layers, task="decompose", fps=8, seed=3, settings={"steps": 2})
    manifest = read_manifest(out).to_dict()  # read and written by the same type: a round trip
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert {
        k: manifest[k] for k in ("format", "version", "task", "fps", "num_frames", "height", "width", "alpha")
    } == {
        "format": "layerflow-output",
        "version": 2,
        "task": "decompose",
        "fps": 8,
        "num_frames": 4,
        "height": 32,
        "width": 48,
        "alpha": "straight",
    }
    assert manifest["layers"][0] == {
        "name": "foreground",
        "role": "foreground",
        "kind": "rgba",
        "files": {"png": "foreground", "webm": "foreground.webm"},  # H.264 has no alpha: no mp4
        "prompt": "a red circle",
    }
    assert manifest["layers"][2] == {
        "name": "composite",
        "role": "composite",
        "kind": "rgb",
        "files": {"png": "composite", "webm": "composite.webm", "mp4": "composite.mp4"},
    }
    assert manifest["formats"] == ["png", "webm", "mp4"] and manifest["depth"] == ["foreground", "background"]
    assert torch.equal(read_png_sequence(out / "foreground"), layers[0].frames)
    assert Image.open(out / "preview.png").size == (4 * 48 + 3 * 2, 3 * 32 + 2 * 2)
    assert Image.open(out / "preview.gif").n_frames == 4
    assert manifest["seed"] == 3 and manifest["settings"] == {"steps": 2}


def test_output_dir_is_atomic(tmp_path):
    good = OutputLayer("background", "background", _smooth_rgb())
    bad = OutputLayer("matte", "foreground", torch.zeros(4, 2, 32, 48))
    with pytest.raises(ValueError, match="'matte' must be RGB or RGBA"):
        write_output_dir(tmp_path / "out", [good, bad], task="generate", formats=["png"])
    assert list(tmp_path.iterdir()) == []  # no half-written folder, no temporary left behind
    write_output_dir(tmp_path / "out", [good], task="generate", formats=["png"])
    with pytest.raises(FileExistsError):
        write_output_dir(tmp_path / "out", [good], task="generate")
    write_output_dir(
        tmp_path / "out", [good], task="generate", formats=["png"], overwrite=True, previews=False
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["background", "manifest.json"]
    assert np.array_equal(sorted(p.name for p in tmp_path.iterdir()), ["out"])
