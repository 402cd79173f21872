"""``layerflow animate``: an RGBA cutout in, a layered video out, on the shipped tiny base (the demo's
pretrained VAE and text-to-video transformer, the part CogVideoX-2B plays), run as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX

from layer_embeddings.tiny import build_tiny_t5_encoder, build_word_tokenizer
from layerflow import LayerFlowPipeline, LayerFlowTransformer3DModel, LayerLayout
from layerflow.cli import main
from layerflow.demo.assets import PRETRAINED_VAE_DIR, DemoAssetConfig, caption_words
from layerflow.demo.base import PRETRAINED_BASE_DIR
from layerflow.media import read_layer, read_manifest, write_png_sequence
from layerflow.pipelines.scheduling import make_scheduler
from layerflow.testing import single_thread

SIZE = 32
PROMPTS = [
    "-p",
    "foreground=a large red circle moving right",
    "-p",
    "background=a blue gradient background",
    "-p",
    "composite=a large red circle moving right over a blue gradient background",
]
FAST = ["--frames", "5", "--steps", "4", "--no-video", "--device", "cpu"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The shipped base as a LayerFlow model folder (layer embedding zero: never trained for layers)."""
    config = DemoAssetConfig()
    tokenizer = build_word_tokenizer(caption_words(), model_max_length=config.prompt_tokens)
    pipeline = LayerFlowPipeline(
        tokenizer=tokenizer,
        text_encoder=build_tiny_t5_encoder(
            len(tokenizer), d_model=config.text_width, num_layers=config.text_layers, seed=config.seed
        ),
        vae=AutoencoderKLCogVideoX.from_pretrained(PRETRAINED_VAE_DIR).eval(),
        transformer=LayerFlowTransformer3DModel.from_pretrained(
            PRETRAINED_BASE_DIR, position_mode="continuous"
        ),
        scheduler=make_scheduler("dpm"),
        layout=LayerLayout.official().to_dict(),
    )
    folder = tmp_path_factory.mktemp("model") / "base"
    pipeline.save_pretrained(folder)
    return folder


def red_disc(size: int = SIZE) -> torch.Tensor:
    """A cutout of the synthetic world: a red disc with a one-pixel soft edge on a transparent field."""
    yy, xx = torch.meshgrid(torch.arange(size) * 1.0, torch.arange(size) * 1.0, indexing="ij")
    alpha = (size * 0.3 - ((yy - size / 2) ** 2 + (xx - size * 0.42) ** 2).sqrt()).clamp(0, 1)[None]
    return torch.cat([torch.tensor([0.9, 0.15, 0.1])[:, None, None].expand(3, size, size), alpha])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    image = red_disc()
    write_png_sequence(folder / "cutout", image[None])
    write_png_sequence(folder / "rgb", image[None, :3])
    write_png_sequence(folder / "small", red_disc(16)[None])
    write_png_sequence(
        folder / "plate", torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    )
    return {name: folder / name / "0000.png" for name in ("cutout", "rgb", "small", "plate")}


def over_grey(rgba: torch.Tensor) -> torch.Tensor:
    return rgba[:3] * rgba[3:] + 0.5 * (1 - rgba[3:])


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a > 0.5) & (b > 0.5)).sum() / ((a > 0.5) | (b > 0.5)).sum())


@torch.no_grad()
def round_trip(image: torch.Tensor) -> torch.Tensor:
    """The shipped VAE's round trip of one RGBA frame as the codec carries it (colour over grey,
    alpha as a 3-channel clip), frame 0 alone: the error floor of a first-frame condition."""
    vae = AutoencoderKLCogVideoX.from_pretrained(PRETRAINED_VAE_DIR).eval()

    def trip(pixels: torch.Tensor) -> torch.Tensor:
        latent = vae.encode((pixels * 2 - 1)[None, :, None]).latent_dist.mean
        return ((vae.decode(latent).sample[0, :, 0] + 1) / 2).clamp(0, 1)

    colour, alpha = trip(over_grey(image)), trip(image[3:].expand(3, -1, -1)).mean(0, keepdim=True)
    return torch.cat([colour, alpha])


def test_animate_a_cutout_in_a_process(model_dir, images, tmp_path) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "layerflow",
        "animate",
        str(model_dir),
        "--image",
        f"foreground={images['cutout']}",
    ]
    done = subprocess.run([*command, *PROMPTS, "-o", str(out), *FAST], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(out)
    assert manifest.task == "animate" and manifest.num_frames == 5
    assert manifest.settings["first_frames"] == ["foreground"]
    assert manifest.settings["first_frame_mode"] == "training_free"  # the base was never trained for it
    foreground = read_layer(out, manifest, "foreground")
    given, floor = red_disc(), round_trip(red_disc())
    # Frame 0 is the given cutout within the VAE's own round trip of it, plus what the decode adds:
    # 8-bit PNGs, and the generated latents beside it in the decoder's GroupNorm statistics (the base
    # was never trained on alpha clips, so its alpha latents are the least like the VAE's).
    colour_error = float((over_grey(foreground[0]) - over_grey(given)).abs().mean())
    floor_error = float((floor[:3] - over_grey(given)).abs().mean())
    assert colour_error <= floor_error + 0.02, (colour_error, floor_error)
    assert iou(foreground[0, 3], given[3]) >= iou(floor[3], given[3]) - 0.05
    # The other frames are generated, not copies of the first.
    assert all(float((foreground[i] - foreground[0]).abs().mean()) > 0.02 for i in range(1, 5))
    assert {layer.name for layer in manifest.layers} == {"foreground", "background", "composite"}
    # Editing works on it as on every other output, and so does evaluation against a reference.
    assert main(["recompose", str(out), "-o", str(tmp_path / "recomposed"), "--no-video"]) == 0
    reference = tmp_path / "reference"
    write_png_sequence(reference / "foreground", given[None].expand(5, -1, -1, -1))
    write_png_sequence(reference / "background", torch.full((5, 3, SIZE, SIZE), 0.5))
    (reference / "prompts.json").write_text('{"foreground": "a red circle"}')
    for folder in (out, tmp_path / "recomposed"):
        assert main(["eval", str(folder), "--reference", str(reference)]) == 0, folder


def test_a_plate_and_a_resized_cutout(model_dir, images, tmp_path) -> None:
    argv = ["animate", str(model_dir), "--image", f"foreground={images['small']}", "--resize"]
    argv += ["--image", f"background={images['plate']}", "--height", str(SIZE), "--width", str(SIZE)]
    assert (
        main([*argv, *PROMPTS, "-o", str(tmp_path / "out"), *FAST, "--first-frame-mode", "training-free"])
        == 0
    )
    manifest = read_manifest(tmp_path / "out")
    assert manifest.settings["first_frames"] == ["foreground", "background"]
    assert (manifest.height, manifest.width) == (SIZE, SIZE)


def _fails(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("layerflow: error:") and message in err and err.count("\n") == 1, err


def test_bad_images_are_one_line_errors_before_any_model_runs(
    model_dir, images, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(LayerFlowPipeline, "from_pretrained", None)  # loading the model would fail
    base = ["animate", str(model_dir), *PROMPTS, "-o", str(tmp_path / "out"), *FAST]
    _fails(
        capsys,
        [*base, "--image", f"foreground={images['rgb']}"],
        "has no alpha, but 'foreground' is a transparent",
    )
    small = ["--image", f"foreground={images['small']}"]
    _fails(capsys, [*base, *small, "--height", "32", "--width", "32"], "is 16x16, but the run is 32x32")
    _fails(
        capsys, [*base, *small, "--image", f"background={images['plate']}"], "is 32x32, but the run is 16x16"
    )
    _fails(capsys, [*base, "--image", f"fox={images['cutout']}"], "first frame given for 'fox'")
    _fails(capsys, [*base], "needs --image LAYER=PATH")
    _fails(
        capsys,
        [*base, "--image", f"background={images['cutout']}"],
        "has transparent pixels, but 'background'",
    )
    _fails(
        capsys,
        [*base, "--image", f"foreground={images['cutout']}", "--first-frame-mode", "trained"],
        "not trained for 'animate'",
    )
    _fails(
        capsys,
        [*base, "--image", f"foreground={images['cutout']}", "--opaque", "background"],
        "--opaque given",
    )
