"""Converter round trip: a tiny model written in the official SAT naming converts back exactly."""

import json
import pickle

import pytest
import torch
from peft import LoraConfig

from layerflow.convert import (
    ConversionError,
    build_transformer,
    convert_official_checkpoint,
    convert_official_state_dict,
)
from layerflow.models import LayerFlowTransformer3DModel
from layerflow.pipelines import LayerFlowPipeline
from layerflow.testing import (
    build_tiny_pipeline,
    build_tiny_transformer,
    official_state_dict,
    random_lora_factors,
    single_thread,
    write_official_checkpoint,
)
from layerflow.variants import OFFICIAL_VARIANTS, official_variant

TEXT = 12
FRAMES = 16  # latent frames of the position table (gen_rgba: 64 frames -> 16 latents)
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
P = "model.diffusion_model."
#: 4 x 6 latents (6 tokens per latent frame): tiny position tables of different variants differ in length.
TINY = {"sample_height": 4, "sample_width": 6, "max_text_seq_length": TEXT}


def tiny_transformer(**overrides):
    return build_tiny_transformer(sample_width=6, **overrides)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def assert_same_model(converted, model):
    """Bit-identical weights; outputs equal up to the alignment-dependent rounding of mmapped weights."""
    expected = model.state_dict()
    assert converted.state_dict().keys() == expected.keys()
    for key, value in converted.state_dict().items():
        assert torch.equal(value, expected[key]), key
    video, text, t = _inputs(model.config.num_layer_prompts)
    torch.testing.assert_close(
        converted(video, text, t).sample, model(video, text, t).sample, rtol=0, atol=1e-6
    )


def _inputs(prompts=3):
    g = torch.Generator().manual_seed(7)
    return (
        torch.randn(1, FRAMES, 4, 4, 6, generator=g),
        torch.randn(1, prompts * TEXT, 16, generator=g),
        torch.tensor([500]),
    )


def _convert(tmp_path, sat, **kwargs):
    official = write_official_checkpoint(tmp_path, sat)
    out = convert_official_checkpoint(official, tmp_path / "out", **TINY, **kwargs)
    return LayerFlowTransformer3DModel.from_pretrained(out / "transformer").eval()


@torch.no_grad()
def test_round_trip_is_exact_without_lora(tmp_path):
    model = tiny_transformer(num_layer_prompts=3)
    zero = {k: (d, torch.zeros_like(u)) for k, (d, u) in random_lora_factors(model, 4, 0).items()}
    motion = random_lora_factors(model, 2, 1)  # the motion LoRA is gated off at inference: dropped
    converted = _convert(tmp_path, official_state_dict(model, motion, zero), lora="merge")
    assert converted.config.layer_embedder == "linear" and converted.config.learned_position_frames is None
    assert converted.patch_embed.position_table is None
    assert_same_model(converted, model)
    assert (tmp_path / "out" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()


@torch.no_grad()
def test_merged_content_lora_matches_peft(tmp_path):
    model = tiny_transformer(num_layer_prompts=3)
    content, motion = random_lora_factors(model, 4, 2), random_lora_factors(model, 2, 3)
    converted = _convert(tmp_path, official_state_dict(model, motion, content), lora="merge")
    _peft_reference(model, {"content": (content, 4)})
    video, text, t = _inputs()
    torch.testing.assert_close(
        converted(video, text, t).sample, model(video, text, t).sample, rtol=1e-5, atol=1e-5
    )


def _peft_reference(model, adapters):
    """The oracle: peft LoRA adapters with the official scaling alpha / r (alpha = 1)."""
    for name, (factors, rank) in adapters.items():
        model.add_adapter(
            LoraConfig(r=rank, lora_alpha=1, target_modules=list(PROJECTIONS)), adapter_name=name
        )
        for path, module in model.named_modules():
            if path in factors:
                module.lora_A[name].weight.copy_(factors[path][0])
                module.lora_B[name].weight.copy_(factors[path][1])
    model.set_adapters(list(adapters))
    return model


@torch.no_grad()
def test_lora_imported_as_multi_lora_adapters(tmp_path):
    import multi_lora as ml

    model = tiny_transformer(num_layer_prompts=3)
    content, motion = random_lora_factors(model, 4, 2), random_lora_factors(model, 2, 3)
    converted = _convert(tmp_path, official_state_dict(model, motion, content), lora="adapters")
    assert sorted(ml.list_adapters(converted)) == ["content", "motion"]
    assert (tmp_path / "out" / "transformer" / "adapters" / "content").is_dir()
    assert ml.get_scale(converted, "motion") == 0.0 and ml.get_scale(converted, "content") == 1.0
    video, text, t = _inputs()
    reference = tiny_transformer(num_layer_prompts=3)
    _peft_reference(reference, {"content": (content, 4)})
    torch.testing.assert_close(
        converted(video, text, t).sample, reference(video, text, t).sample, rtol=1e-5, atol=1e-5
    )
    ml.set_scale(converted, "motion", 1.0)  # the training-time static-image path: both LoRAs
    both = _peft_reference(
        tiny_transformer(num_layer_prompts=3), {"content": (content, 4), "motion": (motion, 2)}
    )
    torch.testing.assert_close(
        converted(video, text, t).sample, both(video, text, t).sample, rtol=1e-5, atol=1e-5
    )


@torch.no_grad()
def test_learned_position_table_is_kept(tmp_path):
    # seg_rgba: two prompts, no layer embedder, a learned 16-frame table
    model = tiny_transformer(num_layer_prompts=2, layer_embedder=None, learned_position_frames=FRAMES)
    model.patch_embed.position_table.add_(torch.randn_like(model.patch_embed.position_table) * 0.1)
    lora = {k: (d, torch.zeros_like(u)) for k, (d, u) in random_lora_factors(model, 2, 0).items()}
    sat = official_state_dict(model, lora, lora, position_table=model.patch_embed.position_table)
    converted = _convert(tmp_path, sat, lora="merge")
    assert converted.config.learned_position_frames == FRAMES
    assert_same_model(converted, model)
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["layout"]["variant"] == "seg_rgba"


def test_unknown_and_missing_keys_are_named_and_nothing_is_written(tmp_path):
    model = tiny_transformer(num_layer_prompts=3)
    lora = random_lora_factors(model, 2, 0)
    sat = official_state_dict(model, lora, lora)
    sat[f"{P}mixins.mystery.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="mixins.mystery.weight"):
        _convert(tmp_path, sat, lora="merge")
    assert not (tmp_path / "out").exists()
    sat = official_state_dict(model, lora, lora)
    del sat[f"{P}transformer.layers.0.mlp.dense_4h_to_h.bias"]
    with pytest.raises(ConversionError, match=r"missing \['transformer_blocks.0.ff.net.2.bias'\]"):
        build_transformer(convert_official_state_dict(sat, lora="merge", **TINY))
    del sat[f"{P}transformer.layers.0.attention.dense.matrix_D.0"]
    with pytest.raises(ConversionError, match="only one of matrix_C/matrix_D"):
        convert_official_state_dict(sat, lora="merge", **TINY)


class Payload:
    def __reduce__(self):
        return (print, ("unrestricted unpickling ran code",))


def test_refuses_unsafe_pickles(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    with open(folder / "mp_rank_00_model_states.pt", "wb") as handle:
        pickle.dump({"module": {}, "payload": Payload()}, handle)
    with pytest.raises(ConversionError, match="weights-only"):
        convert_official_checkpoint(folder, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no mp_rank_00_model_states.pt"):
        convert_official_checkpoint(tmp_path, tmp_path / "out2")


@torch.no_grad()
def test_with_a_base_folder_the_output_is_a_loadable_pipeline(tmp_path):
    base = build_tiny_pipeline()
    base.save_pretrained(tmp_path / "base")
    model = tiny_transformer(num_layer_prompts=3)
    lora = {k: (d, torch.zeros_like(u)) for k, (d, u) in random_lora_factors(model, 2, 0).items()}
    official = write_official_checkpoint(tmp_path, official_state_dict(model, lora, lora))
    out = convert_official_checkpoint(
        official, tmp_path / "pipe", base=tmp_path / "base", lora="merge", **TINY
    )
    pipe = LayerFlowPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.layer_layout == official_variant("gen_rgba").layout  # no flags needed
    result = pipe(
        {"foreground": "a fox", "background": "snow", "composite": "a fox in snow"},
        num_frames=8,
        num_inference_steps=1,
    )
    assert result.settings["use_dynamic_cfg"] is True and result.latents.shape[1] == 4 * 2
    assert result.layers["foreground"].shape == (1, 8, 4, 16, 24)


def test_cli_convert_and_info(tmp_path, capsys):
    from layerflow.cli import main

    model = tiny_transformer(num_layer_prompts=3)
    lora = random_lora_factors(model, 2, 4)
    official = write_official_checkpoint(tmp_path, official_state_dict(model, lora, lora))
    assert main(["info", str(official)]) == 0
    assert "mp_rank_00_model_states.pt" in capsys.readouterr().out
    argv = ["convert", str(official), str(tmp_path / "out"), "--text-length", "12", "--latent-size", "4", "6"]
    assert main(argv) == 0
    assert main(["info", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "adapters: ['content', 'motion']" in out and "num_layer_prompts=3" in out
    assert "variant: gen_rgba, tasks: ['generate'], VAE pass: joint" in out
    assert main(argv) == 2  # exists: refused without --overwrite
    assert "already exists" in capsys.readouterr().err


#: Variants whose checkpoints have the same shapes: the task is not in the weights.
SAME_SHAPES = {
    "fg2bg_rgb": "bg2fg_rgb",
    "bg2fg_rgb": "fg2bg_rgb",
    "fg2bg_rgba": "bg2fg_rgba",
    "bg2fg_rgba": "fg2bg_rgba",
}


def official_variant_checkpoint(name):
    """A tiny checkpoint in the official key names and shapes of variant ``name``."""
    variant = OFFICIAL_VARIANTS[name]
    learned = variant.position_table == "learned"
    model = tiny_transformer(
        num_layer_prompts=variant.num_prompts,
        layer_embedder=variant.layer_embedder,
        learned_position_frames=variant.table_latent_frames if learned else None,
    )
    table = model.patch_embed.sincos_position_table(variant.table_latent_frames)
    if learned:
        table = table + torch.randn(table.shape, generator=torch.Generator().manual_seed(1)) * 0.1
        model.patch_embed.position_table.data.copy_(table)
    lora = {k: (d, torch.zeros_like(u)) for k, (d, u) in random_lora_factors(model, 2, 0).items()}
    return model, official_state_dict(model, lora, lora, position_table=table)


@pytest.mark.parametrize("name", sorted(OFFICIAL_VARIANTS))
@torch.no_grad()
def test_each_official_variant_is_detected_or_named_as_ambiguous(name):
    model, sat = official_variant_checkpoint(name)
    if name in SAME_SHAPES:
        with pytest.raises(ConversionError, match="fits several official variants") as error:
            convert_official_state_dict(sat, lora="merge", **TINY)
        assert name in str(error.value) and SAME_SHAPES[name] in str(error.value)
        converted = convert_official_state_dict(sat, lora="merge", variant=name, **TINY)
    else:
        converted = convert_official_state_dict(sat, lora="merge", **TINY)
    assert converted.variant == name
    variant = OFFICIAL_VARIANTS[name]
    assert converted.config["num_layer_prompts"] == variant.num_prompts
    assert (converted.config.get("learned_position_frames") is not None) == (
        variant.position_table == "learned"
    )
    transformer = build_transformer(converted)
    for key, value in model.state_dict().items():
        assert torch.equal(transformer.state_dict()[key], value), key


def test_a_wrong_variant_is_refused():
    _, sat = official_variant_checkpoint("gen_rgb")
    with pytest.raises(ConversionError, match="not a gen_rgba checkpoint"):
        convert_official_state_dict(sat, lora="merge", variant="gen_rgba", **TINY)
    with pytest.raises(ConversionError, match="no official variant fits"):
        convert_official_state_dict(sat, lora="merge", **{**TINY, "sample_width": 4})


def test_journey_convert_info_and_run_a_variant_in_fresh_interpreters(tmp_path):
    """``layerflow convert`` on an official checkpoint, ``layerflow info``, then ``from_pretrained``
    with no flags runs the detected variant: every step a new process on files on disk."""
    import subprocess
    import sys

    with single_thread():
        base = build_tiny_pipeline(sample_width=6)
        base.save_pretrained(tmp_path / "base")
        _, sat = official_variant_checkpoint("seg_rgb")
    official = write_official_checkpoint(tmp_path, sat)
    cli = [sys.executable, "-m", "layerflow.cli"]
    size = ["--text-length", str(TEXT), "--latent-size", "4", "6", "--lora", "merge"]
    converted = subprocess.run(
        [*cli, "convert", str(official), str(tmp_path / "model"), "--base", str(tmp_path / "base"), *size],
        capture_output=True,
        text=True,
    )
    assert converted.returncode == 0, converted.stderr[-2000:]
    info = subprocess.run([*cli, "info", str(tmp_path / "model")], capture_output=True, text=True)
    assert "variant: seg_rgb, tasks: ['decompose'], VAE pass: joint" in info.stdout, info.stderr
    assert "condition = last 2 latents" in info.stdout
    code = """
import sys, torch
import layerflow
torch.set_num_threads(1)
pipe = layerflow.LayerFlowPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
out = pipe({"foreground": "a fox", "background": "snow"}, "decompose",
           conditions={"composite": torch.rand(16, 3, 16, 24)}, num_inference_steps=1)
print(out.task, tuple(out.latents.shape), out.settings["use_dynamic_cfg"])
"""
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "model")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[-2] == "decompose (1, 12, 4, 4, 6) True"
