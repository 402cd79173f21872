"""First-frame conditions (``animate``): the condition latents are the stock VAE encode of the
pre-composited first frame, spliced unchanged at every step (trained mode) or re-noised along one
forward-process path (training-free mode), and bad inputs are refused before any model runs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from layerflow.conditions import first_frame_only
from layerflow.layout import LayerLayout
from layerflow.testing import build_tiny_pipeline, single_thread
from layerflow.variants import OFFICIAL_VARIANTS, official_variant

PROMPTS = {"foreground": "a red circle", "background": "blue stripes", "composite": "a red circle"}
GREY = 0.5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def cutout(seed: int = 0, size: int = 16) -> torch.Tensor:
    """An RGBA image [4, H, W]: random colour, an opaque square on a transparent field, soft edge."""
    generator = torch.Generator().manual_seed(seed)
    alpha = torch.zeros(1, size, size)
    alpha[:, 4:12, 4:12] = 1.0
    alpha[:, 3, 4:12] = 0.5
    return torch.cat([torch.rand(3, size, size, generator=generator), alpha])


def stock_encode(vae, video: torch.Tensor) -> torch.Tensor:
    """Stock ``vae.encode`` of model-range frames ``[T, 3, H, W]`` -> scaled mean latents ``[t, C, h, w]``."""
    mean = vae.encode(video.permute(1, 0, 2, 3)[None]).latent_dist.mean
    return (mean * vae.config.scaling_factor)[0].permute(1, 0, 2, 3)


def animate(pipe, conditions, num_frames: int, **kwargs):
    prompts = {layer.name: PROMPTS[layer.role] for layer in pipe.layer_layout.layers}
    kwargs.setdefault("num_inference_steps", 2)
    return pipe(
        prompts,
        "animate",
        conditions=conditions,
        num_frames=num_frames,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )


@pytest.mark.parametrize(("num_frames", "span"), [(9, 1), (8, 4)])
def test_alpha_clip_first_frame_is_the_stock_encode_of_the_grey_composited_frame(
    deterministic_vae, num_frames: int, span: int
) -> None:
    """9 frames: latent 0 is frame 0 alone; 8 frames: latent 0 covers frames 0..3, so the frame is held over them."""
    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    image = cutout()
    out = animate(pipe, {"foreground": first_frame_only(image)}, num_frames, output_type="latent")
    colour = image[:3] * image[3:] + GREY * (1 - image[3:])  # onto grey, never black
    per_clip = out.latents.shape[1] // 4
    for clip, pixels in ((0, colour), (1, image[3:].expand(3, -1, -1))):
        expected = stock_encode(pipe.vae, (pixels * 2 - 1).expand(span, -1, -1, -1))
        assert expected.shape[0] == 1
        assert torch.equal(out.latents[0, clip * per_clip], expected[0])
    assert out.settings["first_frame_mode"] == "training_free"  # the default layout lists only the four tasks


def test_rgb_layout_and_background_plate(deterministic_vae) -> None:
    """RGB layout: the cutout pre-composited onto grey; an RGB plate conditions the background."""
    pipe = build_tiny_pipeline(LayerLayout.official("rgb"))
    pipe.set_progress_bar_config(disable=True)
    image, plate = cutout(), torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3))
    out = animate(
        pipe,
        {"foreground": first_frame_only(image), "background": first_frame_only(plate)},
        9,
        output_type="latent",
    )
    colour = image[:3] * image[3:] + GREY * (1 - image[3:])
    assert torch.equal(out.latents[0, 0], stock_encode(pipe.vae, colour[None] * 2 - 1)[0])
    assert torch.equal(out.latents[0, 3], stock_encode(pipe.vae, plate[None] * 2 - 1)[0])


def test_latent_offset_first_frame_is_the_transparent_encode() -> None:
    pipe = build_tiny_pipeline(LayerLayout.official("latent_offset"))
    pipe.set_progress_bar_config(disable=True)
    image = cutout()
    out = animate(pipe, {"foreground": first_frame_only(image)}, 9, output_type="latent")
    expected = pipe.transparent_vae.encode_rgba(pipe.vae, image[None, None])
    assert expected.shape[1] == 1
    assert torch.equal(out.latents[:, 0], expected[:, 0])


def test_joint_pass_holds_the_frame_then_grey(deterministic_vae) -> None:
    """Joint pass: one causal video, the cutout held over its clip's first latent span, grey elsewhere."""
    layout = dataclasses.replace(LayerLayout.official(), vae_pass="joint")
    pipe = build_tiny_pipeline(layout)
    pipe.set_progress_bar_config(disable=True)
    image = cutout()
    out = animate(pipe, {"foreground": first_frame_only(image)}, 8, output_type="latent")
    colour = image[:3] * image[3:] + GREY * (1 - image[3:])
    video = torch.zeros(32, 3, 16, 16)  # 4 clips of 8 frames, mid-grey in model range
    video[0:4] = colour * 2 - 1
    video[8:12] = image[3:] * 2 - 1
    pipe.vae.num_sample_frames_batch_size = 32  # the whole video in one batch, as the joint pass
    expected = stock_encode(pipe.vae, video)
    assert torch.equal(out.latents[0, 0], expected[0]) and torch.equal(out.latents[0, 2], expected[2])


@pytest.mark.parametrize("mode", ["trained", "training_free"])
def test_splice_at_every_step(mode: str) -> None:
    """The callback sees the condition latents unchanged; the transformer sees them clean (trained)
    or at every step's noise level along one noise draw (training-free)."""
    layout = dataclasses.replace(LayerLayout.official(), tasks=("generate", "animate"))
    pipe = build_tiny_pipeline(layout if mode == "trained" else LayerLayout.official())
    pipe.set_progress_bar_config(disable=True)
    seen: list[torch.Tensor] = []
    inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(module, args, kwargs):
        inputs.append((kwargs["hidden_states"][:, 0].clone(), kwargs["timestep"][0].clone()))

    hook = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    out = animate(
        pipe,
        {"foreground": first_frame_only(cutout())},
        9,
        num_inference_steps=3,
        callback_on_step_end=lambda p, i, t, d: seen.append(d["condition_latents"].clone()) or {},
        callback_on_step_end_tensor_inputs=("latents", "condition_latents"),
    )
    hook.remove()
    assert out.settings["first_frame_mode"] == mode and len(seen) == len(inputs) == 3
    clean = out.latents[:, 0]
    assert all(torch.equal(s[:, 0], clean) for s in seen)
    if mode == "trained":
        assert all(torch.equal(x[:1], clean) for x, _ in inputs)  # both CFG halves: the first one
        return
    alphas = pipe.scheduler.alphas_cumprod
    coefficients = [(alphas[t] ** 0.5, (1 - alphas[t]) ** 0.5) for _, t in inputs]
    (x0, _), (a0, s0) = inputs[0], coefficients[0]
    noise = (x0[:1] - a0 * clean) / s0
    for (x, _), (a, s) in zip(inputs[1:], coefficients[1:], strict=True):
        assert torch.allclose(x[:1], a * clean + s * noise, atol=1e-5)
    assert not torch.allclose(x0[:1], clean)


def _refused(pipe, conditions, message, **kwargs) -> None:
    calls: list[int] = []
    hook = pipe.vae.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError) as error:
            pipe(PROMPTS, kwargs.pop("task", "animate"), conditions=conditions, num_frames=9, **kwargs)
    finally:
        hook.remove()
    text = str(error.value)
    assert message in text and "\n" not in text, text
    assert not calls  # refused before the VAE ran


def test_bad_first_frames_are_refused_before_any_model_runs() -> None:
    pipe = build_tiny_pipeline()
    image = cutout()
    _refused(pipe, {"foreground": first_frame_only(image[:3])}, "first frame of 'foreground' must be RGBA")
    _refused(pipe, {"foreground": first_frame_only(image[:, :8])}, "has height=8, expected 16", height=16)
    _refused(pipe, {"fox": first_frame_only(image)}, "first frame given for 'fox'")
    _refused(
        pipe,
        {"foreground": first_frame_only(image)},
        "takes no first frame for layer 'foreground'",
        task="generate",
    )
    _refused(pipe, {}, "needs the first frame of at least one layer")
    _refused(
        pipe, {"foreground": first_frame_only(image)}, "not trained for 'animate'", first_frame_mode="trained"
    )
    _refused(
        pipe,
        {"foreground": first_frame_only(image)},
        "isolate_conditions works on whole clips",
        isolate_conditions=True,
    )
    _refused(pipe, {"background": first_frame_only(image[:3] * 255)}, "(0-255 frames: divide by 255)")


def test_opaque_makes_an_rgb_image_a_cutout() -> None:
    frame = first_frame_only(torch.rand(3, 16, 16), opaque=True).frames
    assert frame.shape == (1, 4, 16, 16) and torch.equal(frame[:, 3], torch.ones(1, 16, 16))


def test_duplicated_first_frame_clip_takes_the_frame_alone(deterministic_vae) -> None:
    """With a duplicated first frame (official RGBA fg2bg/bg2fg), clip 0's latent 0 is frame 0 alone
    even at 8 frames per clip; the alpha clip after it holds the frame over 4 frames."""
    layout = dataclasses.replace(LayerLayout.official(), duplicate_first_frame=True)
    pipe = build_tiny_pipeline(layout)
    pipe.set_progress_bar_config(disable=True)
    image = cutout()
    out = animate(pipe, {"foreground": first_frame_only(image)}, 8, output_type="latent")
    colour = image[:3] * image[3:] + GREY * (1 - image[3:])
    assert torch.equal(out.latents[0, 0], stock_encode(pipe.vae, colour[None] * 2 - 1)[0])
    alpha = (image[3:] * 2 - 1).expand(4, 3, -1, -1)
    assert torch.equal(out.latents[0, 3], stock_encode(pipe.vae, alpha)[0])  # clip 0 has 3 latents


@pytest.mark.parametrize("name", sorted(OFFICIAL_VARIANTS))
def test_official_variants(name: str) -> None:
    """The official generation checkpoints animate training-free; the conditional ones refuse, naming the variant."""
    layout = official_variant(name).layout
    pipe = build_tiny_pipeline(layout)
    pipe.set_progress_bar_config(disable=True)
    image = cutout() if layout.alpha != "rgb" else cutout()[:3]
    if "generate" not in layout.tasks:
        with pytest.raises(ValueError, match=f"official variant {name!r} runs only"):
            animate(pipe, {"foreground": first_frame_only(image)}, 8, output_type="latent")
        return
    out = animate(
        pipe, {"foreground": first_frame_only(image)}, 8, num_inference_steps=1, output_type="latent"
    )
    assert out.settings["first_frame_mode"] == "training_free"
