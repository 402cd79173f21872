import math

import pytest
import torch

from layerflow.layout import LayerLayout
from layerflow.pipelines import LayerFlowPipeline, dynamic_guidance_scale
from layerflow.pipelines.scheduling import switch_scheduler
from layerflow.testing import build_tiny_pipeline, random_layer_frames, single_thread

PROMPTS = {
    "foreground": "a red circle",
    "background": "blue stripes",
    "composite": "a red circle over blue stripes",
}
CONDITION_ROLE = {
    "foreground_to_background": "foreground",
    "background_to_foreground": "background",
    "decompose": "composite",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _prompts_for(pipe: LayerFlowPipeline, task: str) -> dict[str, str]:
    names = [layer.name for layer in pipe.layer_layout.for_task(task).prompt_layers]
    return {name: PROMPTS.get(name, f"a {name.split('_')[-1]} red circle") for name in names}


def _conditions_for(pipe: LayerFlowPipeline, task: str, seed: int = 3) -> dict[str, torch.Tensor]:
    frames = random_layer_frames(pipe.layer_layout, seed=seed)
    return {layer.name: frames[layer.name] for layer in pipe.layer_layout.for_task(task).condition_layers}


class CallRecorder:
    """Records the transformer's inputs on every call."""

    def __init__(self, pipe: LayerFlowPipeline):
        self.inputs: list[torch.Tensor] = []
        self.handle = pipe.transformer.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.inputs.append(kwargs["hidden_states"].clone())

    def close(self) -> None:
        self.handle.remove()


def _run(pipe: LayerFlowPipeline, task: str, seed: int = 0, **kwargs):
    return pipe(
        _prompts_for(pipe, task),
        task,
        conditions=_conditions_for(pipe, task) or None,
        num_frames=8,
        generator=torch.Generator().manual_seed(seed),
        **{"num_inference_steps": 2, **kwargs},
    )


@pytest.fixture(scope="module", params=["rgb", "alpha_clip", "latent_offset"])
def pipe(request) -> LayerFlowPipeline:
    pipeline = build_tiny_pipeline(LayerLayout.official(request.param))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize(
    "task", ["generate", "foreground_to_background", "background_to_foreground", "decompose"]
)
def test_every_task_runs_and_keeps_the_condition_bit_identical(pipe, task):
    task_layout = pipe.layer_layout.for_task(task)
    recorder = CallRecorder(pipe)
    try:
        out = _run(pipe, task, guidance_scale=6.0)
    finally:
        recorder.close()
    alpha = pipe.layer_layout.alpha
    assert set(out.layers) == {"foreground", "background", "composite"}
    assert out.layers["foreground"].shape == (1, 8, 4 if alpha != "rgb" else 3, 16, 16)
    assert out.layers["background"].shape == (1, 8, 3, 16, 16)
    for frames in out.layers.values():
        assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1
    clips = out.latents.split(2, dim=1)
    assert len(clips) == len(task_layout.clips)

    # The clean condition latents: same generator stream as the pipeline (encoding comes first).
    batched = {k: v.unsqueeze(0) for k, v in _conditions_for(pipe, task).items()}
    frames = pipe.geometry.check(8, 16, 16, pipe.layer_layout)
    expected = {}
    if batched:
        posterior = pipe.codec.encode(batched, frames, task_layout.condition_clips)
        encoded = posterior.sample(torch.Generator().manual_seed(0)).split(2, dim=1)
        expected = {index: encoded[index] for index in task_layout.condition_clips}
    assert len(recorder.inputs) == 2
    for index, latent in expected.items():
        assert torch.equal(clips[index], latent), "condition changed by sampling"
        for model_input in recorder.inputs:  # both CFG branches, every step
            assert model_input.shape[0] == 2
            for branch in model_input.split(1):
                assert torch.equal(branch.split(2, dim=1)[index], latent)


def test_same_seed_same_output_and_seed_matters(pipe):
    first, second, other = (_run(pipe, "background_to_foreground", seed=s) for s in (5, 5, 6))
    for name in first.layers:
        assert torch.equal(first.layers[name], second.layers[name])
    assert not torch.equal(first.latents, other.latents)


def test_two_foreground_layout_runs_every_task():
    pipe = build_tiny_pipeline(LayerLayout.with_foregrounds(2, alpha="alpha_clip"))
    pipe.set_progress_bar_config(disable=True)
    for task in ("generate", "foreground_to_background"):
        out = _run(pipe, task)
        assert out.layers["foreground_0"].shape[2] == 4 and out.layers["foreground_1"].shape[2] == 4
        assert out.latents.shape[1] == 6 * 2


def test_guidance_modes(pipe):
    recorder = CallRecorder(pipe)
    try:
        unguided = _run(pipe, "generate", guidance_scale=1.0)
    finally:
        recorder.close()
    assert {x.shape[0] for x in recorder.inputs} == {1}
    zeros = _run(pipe, "generate", unconditional="zeros")
    encoded = _run(pipe, "generate", unconditional="encoded", negative_prompts={"background": "stripes"})
    dynamic = _run(pipe, "generate", use_dynamic_cfg=True)
    latents = [unguided.latents, zeros.latents, encoded.latents, dynamic.latents]
    for i in range(len(latents)):
        for j in range(i + 1, len(latents)):
            assert not torch.equal(latents[i], latents[j])


def test_guidance_interval_guides_only_its_steps(pipe):
    recorder = CallRecorder(pipe)
    try:
        half = _run(pipe, "decompose", guidance_interval=(0.0, 0.5), num_inference_steps=4)
    finally:
        recorder.close()
    # diffusers' guider counting: steps int(0 * 4) <= i < int(0.5 * 4) are guided (a doubled batch).
    assert [x.shape[0] for x in recorder.inputs] == [2, 2, 1, 1]
    assert half.settings["guidance_interval"] == (0.0, 0.5)
    every = _run(pipe, "decompose", num_inference_steps=4)
    assert torch.equal(
        _run(pipe, "decompose", guidance_interval=(0, 1), num_inference_steps=4).latents, every.latents
    )
    late = _run(pipe, "decompose", guidance_interval=(0.5, 1.0), num_inference_steps=4)
    assert not torch.equal(half.latents, every.latents) and not torch.equal(half.latents, late.latents)
    # An interval that holds no step (int(0.2 * 4) = 0) samples exactly as no guidance does.
    none = _run(pipe, "decompose", guidance_interval=(0.0, 0.2), num_inference_steps=4)
    assert torch.equal(
        none.latents, _run(pipe, "decompose", guidance_scale=1.0, num_inference_steps=4).latents
    )


@pytest.mark.parametrize(
    "interval, message",
    [
        ((0.5, 0.5), "0 <= start < stop <= 1"),
        ((-0.1, 0.5), "0 <= start < stop <= 1"),
        ((0.0, 1.5), "0 <= start < stop <= 1"),
        ((0.0, float("nan")), "0 <= start < stop <= 1"),
        ((0.5,), "two numbers"),
        ("0.5", "two numbers"),
        (0.5, "two numbers"),
    ],
)
def test_guidance_interval_is_checked_before_any_model_runs(pipe, interval, message):
    recorder = CallRecorder(pipe)
    try:
        with pytest.raises(ValueError, match=message):
            _run(pipe, "generate", guidance_interval=interval)
    finally:
        recorder.close()
    assert recorder.inputs == []


def test_dynamic_guidance_matches_the_official_schedule():
    # Exact per-step scales of the official sampler (DynamicCFG(scale=6, exp=5, num_steps=50)).
    official = [2.291, 2.544, 6.974, 6.420, 2.788, 4.272, 1.038, 4.170, 1.618, 6.983]
    ours = [dynamic_guidance_scale(6.0, t, 50) for t in range(999, 999 - 20 * 10, -20)]
    assert ours == pytest.approx(official, abs=1e-3)
    assert dynamic_guidance_scale(6.0, 50, 50) == 1.0 and math.isclose(
        dynamic_guidance_scale(6.0, 0, 50), 7.0
    )


def test_ddim_ignores_the_seed_given_latents_and_dpm_sde_does_not(pipe):
    ddim = LayerFlowPipeline(
        **{**pipe.components, "scheduler": switch_scheduler(pipe.scheduler, "ddim")},
        layout=pipe.config.layout,
    )
    ddim.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 2 * len(pipe.layer_layout.clips), 4, 4, 4)
    a, b = (_run(ddim, "generate", seed=s, latents=latents.clone()).latents for s in (1, 2))
    assert torch.equal(a, b)  # deterministic DDIM (eta=0): no noise drawn
    c, d = (_run(pipe, "generate", seed=s, latents=latents.clone()).latents for s in (1, 2))
    assert not torch.equal(c, d)  # DPM++ 2M SDE injects fresh noise every step
    assert not torch.equal(a, c)


def test_callback_output_types_and_embeds(pipe):
    seen: list[int] = []

    def callback(p, step, timestep, tensors):
        seen.append(step)
        assert set(tensors) == {"latents"}
        return {"latents": tensors["latents"] * 0}

    out = _run(pipe, "generate", output_type="latent", callback_on_step_end=callback)
    assert seen == [0, 1] and out.layers == {} and out.latents.abs().max() == 0
    arrays = _run(pipe, "generate", output_type="np")
    assert arrays.layers["background"].shape == (1, 8, 16, 16, 3)
    embeds = pipe.encode_prompts(
        list(_prompts_for(pipe, "generate").values()),
        max_sequence_length=12,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    from_embeds = pipe(
        prompt_embeds=embeds, num_frames=8, num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(from_embeds.latents, _run(pipe, "generate").latents)


@pytest.mark.parametrize("alpha", ["rgb", "latent_offset"])
def test_save_and_load_round_trip(tmp_path, alpha):
    import multi_lora as ml
    from layerflow.models.adapters import add_layerflow_adapters

    pipe = build_tiny_pipeline(LayerLayout.with_foregrounds(2, alpha=alpha))
    pipe.set_progress_bar_config(disable=True)
    add_layerflow_adapters(pipe.transformer, motion_rank=2, content_rank=4)
    for layer in ml.adapter_layers(pipe.transformer, "content").values():
        torch.nn.init.normal_(layer.lora_pair("content")[1].weight, std=0.1)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = LayerFlowPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.layer_layout == pipe.layer_layout
    assert sorted(ml.list_adapters(loaded.transformer)) == ["content", "motion"]
    # equal up to the alignment-dependent rounding of weights read back from (mmapped) files
    torch.testing.assert_close(
        _run(loaded, "generate").latents, _run(pipe, "generate").latents, rtol=0, atol=1e-5
    )


def test_latent_offset_condition_uses_the_transparent_vae():
    pipe = build_tiny_pipeline(LayerLayout.official("latent_offset"))
    frames = _conditions_for(pipe, "foreground_to_background")["foreground"].unsqueeze(0)
    task_layout = pipe.layer_layout.for_task("foreground_to_background")
    (index,) = task_layout.condition_clips
    geometry = pipe.geometry.check(8, 16, 16, pipe.layer_layout)
    latent = pipe.codec.encode({"foreground": frames}, geometry, [index]).sample(None).split(2, dim=1)[index]
    # Zero-initialised offset encoder: the latent is the base VAE's posterior mean of the grey composite.
    grey = frames[:, :, :3] * frames[:, :, 3:] + 0.5 * (1 - frames[:, :, 3:])
    mean = pipe.vae.encode((grey * 2 - 1).permute(0, 2, 1, 3, 4)).latent_dist.mean
    torch.testing.assert_close(latent, (mean * pipe.geometry.scaling_factor).permute(0, 2, 1, 3, 4))


def test_isolated_conditions_need_depth_and_layer_attention(pipe):
    # Isolation changes only what condition tokens see, and condition outputs are dropped: with one
    # block nothing changes; from the second block on, the generated clips attend to different keys.
    assert torch.equal(
        _run(pipe, "decompose").latents, _run(pipe, "decompose", isolate_conditions=True).latents
    )
    deep = build_tiny_pipeline(LayerLayout.official(pipe.layer_layout.alpha), num_layers=2)
    deep.set_progress_bar_config(disable=True)
    assert not torch.equal(
        _run(deep, "decompose").latents, _run(deep, "decompose", isolate_conditions=True).latents
    )
    assert torch.equal(
        _run(deep, "generate", isolate_conditions=True).latents, _run(deep, "generate").latents
    )
    stock = build_tiny_pipeline(LayerLayout.official(pipe.layer_layout.alpha), attention_backend=None)
    with pytest.raises(ValueError, match="needs the layer-attention processor"):
        _run(stock, "decompose", isolate_conditions=True)


class TestBadInputFailsBeforeCompute:
    @pytest.fixture
    def guarded(self, pipe):
        calls: list[str] = []
        handles = [
            pipe.transformer.register_forward_pre_hook(lambda *a: calls.append("transformer")),
            pipe.vae.register_forward_pre_hook(lambda *a: calls.append("vae")),
        ]
        original_encode = pipe.vae.encode
        pipe.vae.encode = lambda *a, **k: calls.append("vae.encode") or original_encode(*a, **k)
        yield pipe
        for handle in handles:
            handle.remove()
        pipe.vae.encode = original_encode
        assert calls == []

    def test_bad_frames(self, guarded):
        with pytest.raises(ValueError, match=r"num_frames=10 .* multiple of 8"):
            guarded(PROMPTS, num_frames=10)

    def test_bad_size(self, guarded):
        with pytest.raises(ValueError, match="height=20 must be a positive multiple of 8"):
            guarded(PROMPTS, height=20, num_frames=8)

    def test_negative_prompts_without_guidance(self, guarded):
        with pytest.raises(ValueError, match="need guidance_scale > 1"):
            guarded(PROMPTS, num_frames=8, guidance_scale=1.0, negative_prompts={"background": "rain"})

    def test_missing_prompt(self, guarded):
        with pytest.raises(ValueError, match=r"missing for layer\(s\) \['composite'\]"):
            guarded({"foreground": "a", "background": "b"})

    def test_missing_condition(self, guarded):
        with pytest.raises(ValueError, match=r"needs condition frames for layer\(s\) \['background'\]"):
            guarded(PROMPTS, "background_to_foreground")

    def test_unexpected_condition(self, guarded):
        with pytest.raises(ValueError, match="conditions given for"):
            guarded(PROMPTS, conditions={"background": torch.rand(8, 3, 16, 16)})

    def test_condition_channels_and_frames(self, guarded):
        with pytest.raises(ValueError, match="'background' must be RGB"):
            guarded(PROMPTS, "background_to_foreground", conditions={"background": torch.rand(8, 4, 16, 16)})
        with pytest.raises(ValueError, match="'background' has frames=8, expected 16"):
            guarded(
                PROMPTS,
                "background_to_foreground",
                num_frames=16,
                conditions={"background": torch.rand(8, 3, 16, 16)},
            )

    def test_too_many_prompts_for_the_model(self):
        pipe = build_tiny_pipeline(LayerLayout.with_foregrounds(3), num_layer_prompts=3)
        with pytest.raises(ValueError, match="5 layer prompts, the transformer has 3 prompt slots"):
            pipe({}, num_frames=8)

    def test_latent_offset_needs_a_transparent_vae(self):
        tiny = build_tiny_pipeline(LayerLayout.official("latent_offset"))
        pipe = LayerFlowPipeline(**{**tiny.components, "transparent_vae": None}, layout=tiny.config.layout)
        with pytest.raises(ValueError, match="no transparent_vae"):
            pipe(PROMPTS, num_frames=8)
        pipe(
            PROMPTS, num_frames=8, num_inference_steps=1, output_type="latent"
        )  # latents need no alpha decoder
