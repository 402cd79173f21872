import json
import shutil

import pytest
import torch

from layerflow.cli import main
from layerflow.layout import LayerLayout
from layerflow.media import read_manifest, read_png_sequence, write_mp4, write_png_sequence, write_webm_rgba
from layerflow.testing import build_tiny_pipeline, random_layer_frames, single_thread

PROMPTS = [
    "-p",
    "foreground=a red circle",
    "-p",
    "background=blue stripes",
    "-p",
    "composite=a red circle over blue stripes",
]
FAST = ["--steps", "1", "--no-video"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    build_tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    frames = random_layer_frames(LayerLayout.official())
    write_png_sequence(folder / "fg_rgba", frames["foreground"])
    write_png_sequence(folder / "fg_rgb", frames["foreground"][:, :3])
    write_png_sequence(folder / "fg_alpha", frames["foreground"][:, 3:])
    write_png_sequence(folder / "fg_alpha_short", frames["foreground"][:4, 3:])
    write_webm_rgba(folder / "fg.webm", frames["foreground"])
    write_mp4(folder / "bg.mp4", frames["background"])
    write_png_sequence(folder / "composite", frames["composite"])
    write_png_sequence(folder / "odd_size", torch.rand(8, 3, 20, 20))
    (folder / "broken.mp4").write_bytes(b"this is not a video")
    return folder


def _fails(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("layerflow: error:") and message in err, err


def test_generate_writes_an_output_folder(model_dir, tmp_path, capsys):
    assert (
        main(["generate", str(model_dir), "-o", str(tmp_path / "out"), *PROMPTS, "--frames", "8", *FAST]) == 0
    )
    manifest = read_manifest(tmp_path / "out")
    assert manifest.task == "generate" and manifest.num_frames == 8
    assert [layer.kind for layer in manifest.layers] == ["rgba", "rgb", "rgb"]
    assert read_png_sequence(tmp_path / "out" / "foreground").shape == (8, 4, 16, 16)
    assert main(["info", str(tmp_path / "out")]) == 0
    assert "task generate, 8 frames of 16x16" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("fg2bg", ["-i", "foreground=fg_rgb", "-a", "foreground=fg_alpha"]),
        ("fg2bg", ["-i", "foreground=fg.webm"]),
        ("bg2fg", ["-i", "background=bg.mp4"]),
        ("decompose", ["-i", "composite=composite", "--isolate-conditions"]),
    ],
)
def test_conditional_tasks_accept_videos_and_frame_folders(model_dir, inputs, tmp_path, command, extra):
    extra = [
        part if "=" not in part else part.split("=")[0] + "=" + str(inputs / part.split("=")[1])
        for part in extra
    ]
    prompts = PROMPTS[:4] if command == "decompose" else PROMPTS
    assert main([command, str(model_dir), "-o", str(tmp_path / "out"), *prompts, *extra, *FAST]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_frames"] == 8 and manifest["settings"]["steps"] == 1


def test_convert_and_info_on_a_model_folder(model_dir, capsys):
    assert main(["info", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "layers: ['foreground (foreground)', 'background (background)', 'composite (composite)']" in out
    assert "num_layer_prompts=4" in out
    _fails(capsys, ["convert", str(model_dir), str(model_dir / "x")], "no mp_rank_00_model_states.pt")


def test_clear_errors(model_dir, inputs, tmp_path, capsys):
    out = ["-o", str(tmp_path / "out")]
    _fails(capsys, ["generate", str(model_dir), *out, *PROMPTS[:4]], "missing for layer(s) ['composite']")
    _fails(capsys, ["bg2fg", str(model_dir), *out, *PROMPTS], "needs --input for ['background']")
    _fails(
        capsys,
        [
            "fg2bg",
            str(model_dir),
            *out,
            *PROMPTS,
            "-i",
            f"foreground={inputs / 'fg_rgb'}",
            "-a",
            f"foreground={inputs / 'fg_alpha_short'}",
        ],
        "has 4 frames",
    )
    _fails(
        capsys,
        ["bg2fg", str(model_dir), *out, *PROMPTS, "-i", f"background={inputs / 'broken.mp4'}"],
        "broken.mp4",
    )
    _fails(
        capsys,
        ["bg2fg", str(model_dir), *out, *PROMPTS, "-i", f"background={inputs / 'nope'}"],
        "does not exist",
    )
    _fails(
        capsys,
        ["bg2fg", str(model_dir), *out, *PROMPTS, "-i", f"background={inputs / 'odd_size'}", *FAST],
        "height=20 must be a positive multiple of 8",
    )
    _fails(
        capsys,
        ["decompose", str(model_dir), *out, *PROMPTS, "-i", f"composite={inputs / 'composite'}"],
        "composite",
    )
    _fails(
        capsys,
        ["generate", str(model_dir), *out, *PROMPTS, "-n", "background=rain", "--unconditional", "zeros"],
        "cannot be used with --unconditional zeros",
    )
    broken = tmp_path / "no_vae"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "vae")
    _fails(capsys, ["generate", str(broken), *out, *PROMPTS], "lacks component(s) ['vae']")
    _fails(capsys, ["generate", str(tmp_path), *out, *PROMPTS], "model_index.json is missing")
    assert not (tmp_path / "out").exists()
