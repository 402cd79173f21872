"""Save / load against peft and diffusers, and the AnimateDiff and LayerFlow importers."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import multi_lora as ml

peft = pytest.importorskip("peft")

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def test_peft_format_loads_in_peft_model(tiny_model, randomize, tmp_path):
    base = copy.deepcopy(tiny_model)
    ml.add_adapter(tiny_model, "content", rank=4, alpha=2.0, target_modules=ATTENTION, layers=[1, 3])
    randomize(tiny_model)
    weights = ml.save_adapter(tiny_model, "content", tmp_path / "content", format="peft")
    assert (
        weights.name == "adapter_model.safetensors" and (tmp_path / "content/adapter_config.json").is_file()
    )
    assert not list((tmp_path / "content").glob("*.tmp"))
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "content").eval()
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(loaded(x), tiny_model(x), rtol=1e-5, atol=1e-6)


def test_peft_saved_adapter_loads_here(tiny_model, randomize, tmp_path):
    reference = copy.deepcopy(tiny_model)
    config = peft.LoraConfig(r=3, lora_alpha=6, target_modules=["to_q", "to_v"], rank_pattern={"to_v": 5})
    theirs = peft.get_peft_model(reference, config)
    randomize(theirs)
    theirs.save_pretrained(tmp_path / "theirs")
    ml.load_adapter(tiny_model, tmp_path / "theirs", "a")
    assert tiny_model.transformer_blocks[0].attn1.to_v.r["a"] == 5
    assert ml.trainable_parameters(tiny_model) == {}  # loaded frozen, as peft does
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(tiny_model(x), theirs(x), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_cogvideox():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=16,
        num_layers=2,
        sample_width=8,
        sample_height=8,
        sample_frames=5,
        max_text_seq_length=8,
    ).eval()


def _cogvideox_inputs():
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(1, 2, 4, 8, 8, generator=generator),
        torch.randn(1, 8, 16, generator=generator),
        torch.tensor([500]),
    )


def _run(model):
    with torch.no_grad():
        return model(*_cogvideox_inputs(), return_dict=False)[0]


def test_diffusers_format_loads_with_load_lora_adapter(tiny_cogvideox, randomize, tmp_path):
    ours = copy.deepcopy(tiny_cogvideox)
    ml.add_adapter(ours, "content", rank=4, alpha=1.0, target_modules=ATTENTION, layers=[1])
    randomize(ours)
    ml.save_adapter(ours, "content", tmp_path / "lora", format="diffusers")
    theirs = copy.deepcopy(tiny_cogvideox)
    theirs.load_lora_adapter(
        tmp_path / "lora",
        weight_name="pytorch_lora_weights.safetensors",
        prefix="transformer",
        adapter_name="content",
    )
    assert theirs.peft_config["content"].lora_alpha == 1.0  # read from the metadata header, not alpha = r
    expected = _run(ours)
    assert not torch.allclose(expected, _run(tiny_cogvideox))
    torch.testing.assert_close(_run(theirs), expected, rtol=1e-5, atol=1e-5)


def test_diffusers_saved_adapter_loads_here(tiny_cogvideox, randomize, tmp_path):
    theirs = copy.deepcopy(tiny_cogvideox)
    theirs.add_adapter(peft.LoraConfig(r=4, lora_alpha=2, target_modules=ATTENTION), adapter_name="default")
    randomize(theirs)
    theirs.save_lora_adapter(tmp_path / "lora", adapter_name="default")
    ours = copy.deepcopy(tiny_cogvideox)
    ml.load_adapter(ours, tmp_path / "lora", "a", prefix="")  # model-level files have no prefix
    torch.testing.assert_close(_run(ours), _run(theirs), rtol=1e-5, atol=1e-5)


def test_diffusers_file_without_metadata_means_alpha_equals_rank(tiny_model, tmp_path):
    torch.manual_seed(3)
    down, up = torch.randn(4, 16), torch.randn(16, 4)
    save_file(
        {
            "transformer.transformer_blocks.0.attn1.to_q.lora.down.weight": down,
            "transformer.transformer_blocks.0.attn1.to_q.lora.up.weight": up,
        },
        tmp_path / "old.safetensors",
    )
    expected_weight = tiny_model.transformer_blocks[0].attn1.to_q.weight + up @ down
    ml.load_adapter(tiny_model, tmp_path / "old.safetensors", "a")
    layer = tiny_model.transformer_blocks[0].attn1.to_q
    assert layer.scaling["a"] == 1.0
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, expected_weight, layer.base_layer.bias))


def test_animatediff_keys_import_with_scale_as_gate(tiny_model, tmp_path):
    torch.manual_seed(4)
    state = {}
    for block in (0, 2):
        for projection in ("to_q", "to_k", "to_v", "to_out"):
            prefix = f"transformer_blocks.{block}.attn1.processor.{projection}_lora"
            state[f"{prefix}.down.weight"] = torch.randn(2, 16)
            state[f"{prefix}.up.weight"] = torch.randn(16, 2)
    save_file(state, tmp_path / "motion_lora.safetensors")
    # AnimateDiff's own loader merges destructively: W += alpha * up @ down.
    merged = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for key, down in state.items():
            if key.endswith("down.weight"):
                path = key.split(".processor.")[0] + "." + key.split(".processor.")[1].split("_lora")[0]
                linear = merged.get_submodule(path.replace("to_out", "to_out.0"))
                linear.weight += 0.8 * state[key.replace("down", "up")] @ down
    ml.load_adapter(tiny_model, tmp_path / "motion_lora.safetensors", "motion", scale=0.8)
    assert ml.get_scale(tiny_model, "motion") == pytest.approx(0.8)
    assert len(ml.adapter_layers(tiny_model, "motion")) == 8
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(tiny_model(x), merged(x), rtol=1e-5, atol=1e-5)


def test_native_round_trip_keeps_config_ranks_and_gate(tiny_model, randomize, tmp_path):
    fresh = copy.deepcopy(tiny_model)
    ml.add_adapter(
        tiny_model,
        "a",
        rank=3,
        alpha=1.5,
        target_modules=["to_q", "to_v"],
        rank_pattern={"to_v": 5},
        gate_mode="dense",
    )
    randomize(tiny_model)
    ml.set_scale(tiny_model, "a", 0.3)
    ml.save_adapter(tiny_model, "a", tmp_path / "native", format="native")
    ml.load_adapter(fresh, tmp_path / "native", "a", trainable=True)
    assert ml.get_scale(fresh, "a") == pytest.approx(0.3)
    assert ml.get_adapter_config(fresh, "a").gate_mode == "dense"
    assert fresh.transformer_blocks[2].attn1.to_v.r["a"] == 5
    assert len(ml.trainable_parameters(fresh)) == 16
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(fresh(x), tiny_model(x))


def test_mismatch_errors_list_keys_and_apply_nothing(tiny_model, tmp_path):
    reference = copy.deepcopy(tiny_model)
    state = {
        "transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 16),
        "transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(16, 2),
        "transformer_blocks.1.attn1.to_k.lora_A.weight": torch.zeros(2, 99),
        "transformer_blocks.1.attn1.to_k.lora_B.weight": torch.zeros(16, 2),
        "transformer_blocks.7.attn1.to_q.lora_A.weight": torch.zeros(2, 16),
        "transformer_blocks.7.attn1.to_q.lora_B.weight": torch.zeros(16, 2),
    }
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as error:
        ml.load_adapter(tiny_model, tmp_path / "bad.safetensors", "a", prefix="")
    message = str(error.value)
    assert "transformer_blocks.1.attn1.to_k" in message and "(2, 99)" in message
    assert "transformer_blocks.7.attn1.to_q: no such module" in message
    assert "transformer_blocks.0.attn1.to_q" not in message
    assert ml.list_adapters(tiny_model) == []
    assert not any(isinstance(m, ml.MultiLoraLinear) for m in tiny_model.modules())
    assert str(tiny_model) == str(reference)
    save_file({"x.lora_A.weight": torch.zeros(2, 2), "x.weird": torch.zeros(1)}, tmp_path / "odd.safetensors")
    with pytest.raises(ValueError, match=r"not plain LoRA weights.*x\.weird"):
        ml.load_adapter(tiny_model, tmp_path / "odd.safetensors", "a", format="diffusers", prefix="")


# ----------------------------------------------------------------------------- LayerFlow official


class OfficialLoraLinear(nn.Module):
    """A hand-built copy of LayerFlow's SAT ``LoraLinear`` forward (independent pair per partition)."""

    def __init__(self, in_dim: int, out_dim: int, partition: int, motion_r: int, content_r: int):
        super().__init__()
        self.original = nn.Linear(in_dim, out_dim)
        part = out_dim // partition
        self.matrix_A = nn.ParameterList(
            [nn.Parameter(torch.randn(motion_r, in_dim)) for _ in range(partition)]
        )
        self.matrix_B = nn.ParameterList(
            [nn.Parameter(torch.randn(part, motion_r)) for _ in range(partition)]
        )
        self.matrix_C = nn.ParameterList(
            [nn.Parameter(torch.randn(content_r, in_dim)) for _ in range(partition)]
        )
        self.matrix_D = nn.ParameterList(
            [nn.Parameter(torch.randn(part, content_r)) for _ in range(partition)]
        )
        self.motion_scaling, self.content_scaling = 1.0 / motion_r, 1.0 / content_r

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        motion = torch.cat(
            [(x @ a.T) @ b.T * self.motion_scaling for a, b in zip(self.matrix_A, self.matrix_B)], -1
        )
        content = torch.cat(
            [(x @ c.T) @ d.T * self.content_scaling for c, d in zip(self.matrix_C, self.matrix_D)], -1
        )
        return self.original(x) + motion * scale[:, None, None] + content


class OfficialAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_key_value = OfficialLoraLinear(dim, 3 * dim, 3, motion_r=2, content_r=4)
        self.dense = OfficialLoraLinear(dim, dim, 1, motion_r=2, content_r=4)


def _sat_rename(path: str) -> list[str]:
    """What ``layerflow`` supplies: SAT module path -> diffusers-style module path(s)."""
    index = int(path.split(".")[2])
    if path.endswith("query_key_value"):
        return [f"transformer_blocks.{index}.attn1.{p}" for p in ("to_q", "to_k", "to_v")]
    return [f"transformer_blocks.{index}.attn1.to_out.0"]


def test_layerflow_official_split_matches_fused_layer(tiny_model, tmp_path):
    torch.manual_seed(5)
    dim = 16
    official = nn.ModuleDict({"attention": OfficialAttention(dim)})
    for name, parameter in official.named_parameters():
        if "matrix_B" in name or "matrix_D" in name:
            parameter.data *= 0.5
    with torch.no_grad():  # the fused base equals the tiny model's separate q/k/v weights
        attn = tiny_model.transformer_blocks[2].attn1
        fused = official["attention"].query_key_value.original
        fused.weight.copy_(torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]))
        fused.bias.copy_(torch.cat([attn.to_q.bias, attn.to_k.bias, attn.to_v.bias]))
        official["attention"].dense.original.load_state_dict(attn.to_out[0].state_dict())
    sat_state = {
        f"model.diffusion_model.transformer.layers.2.{k}": v for k, v in official.state_dict().items()
    }
    # A zero-initialised (untrained) LoRA in another block, as in the official checkpoints.
    sat_state["model.diffusion_model.transformer.layers.0.attention.dense.matrix_A.0"] = torch.randn(2, dim)
    sat_state["model.diffusion_model.transformer.layers.0.attention.dense.matrix_B.0"] = torch.zeros(dim, 2)
    torch.save({"module": sat_state}, tmp_path / "mp_rank_00_model_states.pt")

    created = ml.load_layerflow_official(
        tiny_model, tmp_path / "mp_rank_00_model_states.pt", rename=_sat_rename
    )
    assert created == ["motion", "content"]
    assert sorted(ml.adapter_layers(tiny_model, "motion")) == sorted(
        f"transformer_blocks.2.attn1.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")
    )  # the all-zero block-0 LoRA was dropped
    layer = tiny_model.transformer_blocks[2].attn1.to_q
    assert layer.scaling == {"motion": 0.5, "content": 0.25}

    scale = torch.tensor([1.0, 0.0, 0.5])
    ml.set_scale(tiny_model, "motion", scale)
    x = torch.randn(3, 5, dim)
    attn = tiny_model.transformer_blocks[2].attn1
    with torch.no_grad():
        ours_qkv = torch.cat([attn.to_q(x), attn.to_k(x), attn.to_v(x)], -1)
        torch.testing.assert_close(
            ours_qkv, official["attention"].query_key_value(x, scale), rtol=1e-4, atol=1e-4
        )
        torch.testing.assert_close(
            attn.to_out[0](x), official["attention"].dense(x, scale), rtol=1e-4, atol=1e-4
        )


def test_split_fused_lora_shared_a_layout():
    torch.manual_seed(6)
    fused = nn.Linear(8, 12)
    down, up = torch.randn(3, 8), torch.randn(12, 3)
    x = torch.randn(4, 8)
    expected = x @ down.T @ up.T
    pieces = ml.split_fused_lora([down], [up], 3)
    got = torch.cat([x @ a.T @ b.T for a, b in pieces], -1)
    torch.testing.assert_close(got, expected)
    assert fused.out_features == sum(b.shape[0] for _, b in pieces)
    with pytest.raises(ValueError, match="cannot split"):
        ml.split_fused_lora([down], [torch.randn(10, 3)], 3)


def test_layerflow_import_errors_apply_nothing(tiny_model):
    state = {
        "transformer.layers.0.attention.dense.matrix_A.0": torch.randn(2, 16),
        "transformer.layers.0.attention.dense.matrix_B.0": torch.randn(16, 2),
        "transformer.layers.0.attention.dense.matrix_C.0": torch.randn(4, 16),
        "transformer.layers.0.attention.dense.matrix_D.0": torch.randn(15, 4),  # wrong shape
    }
    with pytest.raises(ValueError, match=r"transformer_blocks\.0\.attn1\.to_out\.0.*\(15, 4\)"):
        ml.load_layerflow_official(tiny_model, state, rename=_sat_rename)
    assert ml.list_adapters(tiny_model) == []
    with pytest.raises(ValueError, match="rename gives no module"):
        ml.load_layerflow_official(tiny_model, state, rename={})


def test_weight_files_are_recognised_and_prefix_mismatch_is_explained(tiny_model, randomize, tmp_path):
    source = copy.deepcopy(tiny_model)
    ml.add_adapter(source, "a", rank=2, alpha=4.0, target_modules=["to_k"])
    randomize(source)
    ml.save_adapter(source, "a", tmp_path / "peft", format="peft")
    ml.save_adapter(source, "a", tmp_path / "diffusers", format="diffusers")
    ml.load_adapter(tiny_model, tmp_path / "peft" / "adapter_model.safetensors", "from_peft")
    with pytest.raises(ValueError, match="is prefix='' right"):
        ml.load_adapter(tiny_model, tmp_path / "diffusers", "from_diffusers", prefix="")
    ml.load_adapter(tiny_model, tmp_path / "diffusers" / "pytorch_lora_weights.safetensors", "from_diffusers")
    layer = tiny_model.transformer_blocks[1].attn1.to_k
    assert layer.scaling == {"from_peft": 2.0, "from_diffusers": 2.0}
    ml.disable_adapter(tiny_model, "from_peft")
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(tiny_model(x), source(x))
