"""The eight official variants through the pipeline, and the joint VAE pass against stock ``vae`` calls.

Oracles: the official frame/latent/token bookkeeping written out by hand from the official code
(``diffusion_video*.py``: condition slices, 16/17/12 latent frames, ``L x 226`` text tokens), and one
stock ``AutoencoderKLCogVideoX.encode`` / ``decode`` over the whole concatenated video.
"""

from __future__ import annotations

import pytest
import torch

from layerflow.layout import LayerLayout
from layerflow.testing import TINY_TEXT_LENGTH, build_tiny_pipeline, random_layer_frames, single_thread
from layerflow.variants import OFFICIAL_VARIANTS

TOKENS_PER_LATENT_FRAME = 4  # 4 x 4 latents, patch 2
FRAMES = 16  # official clips
#: Official latent frames and condition latent slices for 16-frame clips (sat/diffusion_video*.py).
OFFICIAL = {
    "gen_rgba": (16, ()),
    "fg2bg_rgba": (17, range(0, 9)),  # dup + fg + alpha
    "bg2fg_rgba": (17, range(9, 13)),
    "seg_rgba": (16, range(12, 16)),
    "gen_rgb": (12, ()),
    "fg2bg_rgb": (12, range(0, 4)),
    "bg2fg_rgb": (12, range(4, 8)),
    "seg_rgb": (12, range(10, 12)),  # only the last 2 latents of the blended clip
}
PROMPT = {
    "foreground": "a red circle",
    "background": "blue stripes",
    "composite": "a red circle over blue stripes",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def variant_pipeline(name: str):
    variant = OFFICIAL_VARIANTS[name]
    pipe = build_tiny_pipeline(
        variant.layout,
        num_layer_prompts=variant.num_prompts,
        layer_embedder=variant.layer_embedder,
        learned_position_frames=variant.table_latent_frames if variant.position_table == "learned" else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_variant(pipe, seed: int = 0, **kwargs):
    task_layout = pipe.layer_layout.for_task(pipe.layer_layout.tasks[0])
    frames = random_layer_frames(pipe.layer_layout, num_frames=FRAMES, seed=3)
    return pipe(
        {layer.name: PROMPT[layer.name] for layer in task_layout.prompt_layers},
        task_layout.task,
        conditions={layer.name: frames[layer.name] for layer in task_layout.condition_layers} or None,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    ), frames


class Recorder:
    def __init__(self, module):
        self.calls: list[tuple[torch.Tensor, torch.Tensor, dict]] = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append(
            (
                kwargs["hidden_states"].clone(),
                kwargs["encoder_hidden_states"].clone(),
                dict(kwargs.get("attention_kwargs") or {}),
            )
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_each_variant_runs_its_task_with_the_official_shapes(name):
    variant = OFFICIAL_VARIANTS[name]
    latent_frames, condition = OFFICIAL[name]
    pipe = variant_pipeline(name)
    with Recorder(pipe.transformer) as recorder:
        out, _ = run_variant(pipe)
    assert out.task == variant.task and out.settings["use_dynamic_cfg"] is True
    assert out.latents.shape == (1, latent_frames, 4, 4, 4)
    text_tokens = variant.num_prompts * TINY_TEXT_LENGTH
    assert len(recorder.calls) == 2
    for hidden, text, attention in recorder.calls:
        assert hidden.shape == (2, latent_frames, 4, 4, 4)  # CFG: uncond + cond
        assert text.shape[:2] == (2, text_tokens)
        assert torch.equal(text[0], torch.zeros_like(text[0]))  # all-zero unconditional text
        layout = attention["layout"]
        assert sum(layout.lengths) == text_tokens + latent_frames * TOKENS_PER_LATENT_FRAME
        assert layout.lengths[: variant.num_prompts] == (TINY_TEXT_LENGTH,) * variant.num_prompts
        # the clean condition latents sit in their official slots in both CFG branches
        for branch in hidden:
            assert torch.equal(branch[list(condition)], out.latents[0, list(condition)])
    generated = [i for i in range(latent_frames) if i not in condition]
    assert not torch.equal(recorder.calls[0][0][0, generated], out.latents[0, generated])
    rgba = variant.alpha == "alpha_clip"
    assert out.layers["foreground"].shape == (1, FRAMES, 4 if rgba else 3, 16, 16)
    assert out.layers["composite"].shape == (1, FRAMES, 3, 16, 16)


def test_variants_refuse_other_tasks_and_bad_frame_counts():
    pipe = variant_pipeline("fg2bg_rgba")
    with pytest.raises(
        ValueError, match=r"official variant 'fg2bg_rgba' runs only \['foreground_to_background'\]"
    ):
        pipe(PROMPT, "generate")
    frames = random_layer_frames(pipe.layer_layout, num_frames=9)
    with pytest.raises(ValueError, match=r"num_frames=9 .*\(joint VAE pass\)"):
        pipe(PROMPT, "foreground_to_background", conditions={"foreground": frames["foreground"]})


def test_official_sampling_defaults_are_overridable():
    pipe = variant_pipeline("gen_rgb")
    default, _ = run_variant(pipe, output_type="latent")
    constant, _ = run_variant(pipe, output_type="latent", use_dynamic_cfg=False, guidance_scale=3.0)
    assert default.settings == {
        "num_inference_steps": 2,
        "guidance_scale": 6.0,
        "use_dynamic_cfg": True,
        "guidance_interval": (0.0, 1.0),
        "unconditional": "zeros",
        "speed": "exact",
        "memory": "default",
    }
    assert constant.settings["use_dynamic_cfg"] is False and constant.settings["guidance_scale"] == 3.0
    assert not torch.equal(default.latents, constant.latents)
    project = build_tiny_pipeline(LayerLayout.official())
    project.set_progress_bar_config(disable=True)
    out = project(PROMPT, num_frames=8, num_inference_steps=1, output_type="latent")
    assert out.settings["use_dynamic_cfg"] is False


def _deterministic_posterior(vae) -> None:
    """logvar -> -30 (std 3e-7): the posterior sample is its mean up to ~1e-6."""
    conv = vae.encoder.conv_out.conv
    channels = conv.out_channels // 2
    with torch.no_grad():
        conv.weight[channels:] = 0
        conv.bias[channels:] = -60.0


def _model_range_video(frames: dict[str, torch.Tensor], alpha_clip: bool, duplicate: bool) -> torch.Tensor:
    """The official pixel video, written out independently: [fg over grey | alpha | bg | blended]."""
    fg = frames["foreground"]
    color, alpha = fg[:, :3], fg[:, 3:]
    clips = [(color * alpha + 0.5 * (1 - alpha)) * 2 - 1]
    if alpha_clip:
        clips.append(alpha.repeat(1, 3, 1, 1) * 2 - 1)
    clips += [frames["background"] * 2 - 1, frames["composite"] * 2 - 1]
    if duplicate:
        clips.insert(0, clips[0][:1])
    return torch.cat(clips).permute(1, 0, 2, 3).unsqueeze(0)  # [1, 3, T, H, W]


@pytest.mark.parametrize("name", ["fg2bg_rgba", "seg_rgb", "bg2fg_rgba"])
@torch.no_grad()
def test_joint_pass_equals_one_stock_encode_and_one_stock_decode(name):
    variant = OFFICIAL_VARIANTS[name]
    latent_frames, condition = OFFICIAL[name]
    pipe = variant_pipeline(name)
    vae = pipe.vae
    _deterministic_posterior(vae)
    out, frames = run_variant(pipe)
    scale = vae.config.scaling_factor

    # Encode: the conditions known, every generated layer a mid-grey (zero) placeholder.
    task_layout = pipe.layer_layout.for_task(variant.task)
    known = {layer.name for layer in task_layout.condition_layers}
    placed = {k: (v if k in known else torch.full_like(v[:, :3], 0.5)) for k, v in frames.items()}
    if "foreground" not in known:
        placed["foreground"] = torch.cat(
            [placed["foreground"], torch.ones_like(placed["foreground"][:, :1])], 1
        )
        if variant.alpha == "alpha_clip":  # the unknown alpha clip is a placeholder too
            placed["foreground"][:, 3:] = 0.5
    video = _model_range_video(placed, variant.alpha == "alpha_clip", variant.duplicate_first_frame)
    vae.num_sample_frames_batch_size = video.shape[2]
    mean = vae.encode(video).latent_dist.mean * scale
    assert mean.shape[2] == latent_frames
    torch.testing.assert_close(
        out.latents[:, list(condition)], mean.permute(0, 2, 1, 3, 4)[:, list(condition)], rtol=0, atol=1e-5
    )

    # Decode: the whole latent sequence in one call, then split (duplicate frame dropped).
    vae.num_latent_frames_batch_size = latent_frames
    decoded = vae.decode(out.latents.permute(0, 2, 1, 3, 4) / scale).sample
    pixels = ((decoded + 1) / 2).clamp(0, 1)[0].permute(1, 0, 2, 3)
    pixels = pixels[int(variant.duplicate_first_frame) :]
    clips = pixels.split(FRAMES)
    fg = clips[0]
    if variant.alpha == "alpha_clip":
        matte = clips[1].mean(1, keepdim=True).clamp(0, 1)
        color = torch.where(
            matte > 1e-3, (fg - 0.5 * (1 - matte)) / matte.clamp_min(1e-3), torch.full_like(fg, 0.5)
        )
        fg = torch.cat([color.clamp(0, 1), matte], 1)
    torch.testing.assert_close(out.layers["foreground"][0], fg, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.layers["background"][0], clips[-2], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.layers["composite"][0], clips[-1], rtol=0, atol=1e-6)


def test_joint_and_per_clip_latents_differ_for_the_same_frames():
    """The joint pass is not per-clip encoding in disguise: clips see their neighbours."""
    joint = variant_pipeline("seg_rgba")
    per_clip_layout = LayerLayout(joint.layer_layout.layers, "alpha_clip", tasks=("decompose",))
    codec_joint, codec_per_clip = joint.codec, type(joint.codec)(per_clip_layout, joint.geometry, joint.vae)
    frames = {k: v.unsqueeze(0) for k, v in random_layer_frames(per_clip_layout, num_frames=FRAMES).items()}
    geometry = joint.geometry.check(FRAMES, 16, 16, joint.layer_layout)
    a = codec_joint.encode(frames, geometry).mean
    b = codec_per_clip.encode(frames, joint.geometry.check(FRAMES, 16, 16, per_clip_layout)).mean
    assert a.shape == b.shape == (1, 16, 4, 4, 4)
    assert not torch.allclose(a, b, atol=1e-4)
