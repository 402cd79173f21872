"""Model-level API: target selection, delete, trainable parameters, and the DDP rule."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

import multi_lora as ml


def test_layer_filter_selects_every_nth_block(tiny_model):
    ml.add_adapter(
        tiny_model,
        "motion",
        rank=2,
        alpha=1.0,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        layers=range(1, 4, 2),
        layers_pattern="transformer_blocks",
    )
    paths = sorted(ml.adapter_layers(tiny_model, "motion"))
    assert paths == sorted(
        f"transformer_blocks.{i}.attn1.{m}" for i in (1, 3) for m in ("to_q", "to_k", "to_v", "to_out.0")
    )
    assert isinstance(tiny_model.transformer_blocks[0].attn1.to_q, nn.Linear)


def test_regex_and_exclude(tiny_model):
    ml.add_adapter(
        tiny_model, "a", rank=2, alpha=1.0, target_modules=r".*attn1\.to_[qk]", exclude_modules=["to_k"]
    )
    assert all(p.endswith("to_q") for p in ml.adapter_layers(tiny_model, "a"))
    assert len(ml.adapter_layers(tiny_model, "a")) == 4


def test_selection_errors_are_clear(tiny_model):
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        ml.add_adapter(tiny_model, "a", rank=2, alpha=1.0, target_modules=["to_qq"])
    with pytest.raises(TypeError, match="not nn.Linear"):
        ml.add_adapter(tiny_model, "a", rank=2, alpha=1.0, target_modules=["ff.1"])
    with pytest.raises(ValueError, match="rank"):
        ml.add_adapter(tiny_model, "a", rank=0, alpha=1.0, target_modules=["to_q"])
    ml.add_adapter(tiny_model, "a", rank=2, alpha=1.0, target_modules=["to_q"])
    with pytest.raises(ValueError, match="already has"):
        ml.add_adapter(tiny_model, "a", rank=2, alpha=1.0, target_modules=["to_k"])
    with pytest.raises(KeyError, match="no adapter 'b'"):
        ml.set_scale(tiny_model, "b", 1.0)


def test_delete_unwraps_and_restores_outputs(tiny_model, randomize):
    reference = copy.deepcopy(tiny_model)
    ml.add_adapter(tiny_model, "a", rank=2, alpha=1.0, target_modules=["to_q", "to_v"])
    ml.add_adapter(tiny_model, "b", rank=3, alpha=1.0, target_modules=["to_q"])
    randomize(tiny_model)
    x = torch.randn(2, 3, 16)
    assert not torch.allclose(tiny_model(x), reference(x))
    ml.delete_adapter(tiny_model, "a")
    assert isinstance(tiny_model.transformer_blocks[0].attn1.to_v, nn.Linear)
    assert isinstance(tiny_model.transformer_blocks[0].attn1.to_q, ml.MultiLoraLinear)
    ml.delete_adapter(tiny_model, "b")
    assert ml.list_adapters(tiny_model) == []
    assert not any(isinstance(m, ml.MultiLoraLinear) for m in tiny_model.modules())
    assert torch.equal(tiny_model(x), reference(x))
    assert tiny_model.state_dict().keys() == reference.state_dict().keys()


def test_trainable_parameters_and_state_dict(tiny_model):
    tiny_model.requires_grad_(False)
    ml.add_adapter(tiny_model, "motion", rank=2, alpha=1.0, target_modules=["to_q"], trainable=False)
    ml.add_adapter(tiny_model, "content", rank=4, alpha=1.0, target_modules=["to_q", "to_v"])
    trainable = ml.trainable_parameters(tiny_model)
    assert len(trainable) == 2 * 8 and all(".content." in k for k in trainable)
    assert set(trainable) <= {n for n, _ in tiny_model.named_parameters()}
    state = ml.adapter_state_dict(tiny_model, "motion")
    assert sorted(state) == sorted(
        f"transformer_blocks.{i}.attn1.to_q.lora_{m}.weight" for i in range(4) for m in "AB"
    )
    assert state["transformer_blocks.0.attn1.to_q.lora_A.weight"].shape == (2, 16)


def test_moving_the_model_moves_gates(tiny_model):
    ml.add_adapter(tiny_model, "a", rank=2, alpha=1.0, target_modules=["to_q"])
    ml.set_scale(tiny_model, "a", 0.5)
    tiny_model.to(torch.float64)
    layer = tiny_model.transformer_blocks[0].attn1.to_q
    assert layer.lora_gate["a"].scalar.dtype == torch.float32  # gate values stay exact
    out = tiny_model(torch.randn(1, 2, 16, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    store = tmp_path_factory.mktemp("ddp") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("gate_mode", ["skip", "auto"])
def test_ddp_rule_for_trainable_adapter_gated_off(process_group, gate_mode):
    """DDP (find_unused_parameters=False) fails when a trainable adapter is skipped; dense mode works."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6)).requires_grad_(False)
    ml.add_adapter(model, "motion", rank=2, alpha=1.0, target_modules=["0", "2"], gate_mode=gate_mode)
    ml.add_adapter(model, "content", rank=2, alpha=1.0, target_modules=["0", "2"])
    ml.set_scale(model, "motion", 0.0)
    ddp = nn.parallel.DistributedDataParallel(model)

    def train(steps: int) -> None:
        for _ in range(steps):
            ddp(torch.randn(3, 6)).sum().backward()

    if gate_mode == "skip":
        with pytest.raises(RuntimeError, match="finished reduction"):
            train(3)
    else:
        train(3)  # auto == dense while training a trainable adapter: parameters used, gradients zero
        motion = [p.grad for n, p in model.named_parameters() if ".motion." in n]
        assert all(g is not None and not g.any() for g in motion)


def test_config_and_gate_validation(tiny_model):
    with pytest.raises(ValueError, match="init must be one of"):
        ml.AdapterConfig(rank=2, alpha=1.0, target_modules=["to_q"], init="orthogonal")
    with pytest.raises(ValueError, match="gate_mode"):
        ml.AdapterConfig(rank=2, alpha=1.0, target_modules=["to_q"], gate_mode="sometimes")
    ml.add_adapter(tiny_model, "g", rank=50, alpha=1.0, target_modules=["to_q"], init="gaussian")
    lora_a = tiny_model.transformer_blocks[0].attn1.to_q.lora_A["g"].weight
    assert abs(lora_a.std().item() - 1 / 50) < 0.004  # peft's gaussian init: normal(std = 1 / r)
    with pytest.raises(ValueError, match=r"1-D tensor \[B\]"):
        ml.set_scale(tiny_model, "g", torch.ones(2, 2))
    with pytest.raises(TypeError, match="bool"):
        ml.set_scale(tiny_model, "g", True)
    with pytest.raises(ValueError, match="finite"):
        ml.set_scale(tiny_model, "g", float("nan"))
    ml.set_scale(tiny_model, "g", [0.5, 1.0])
    assert torch.equal(ml.get_scale(tiny_model, "g"), torch.tensor([0.5, 1.0]))


def test_adding_to_an_eval_model_keeps_eval_mode(tiny_model):
    tiny_model.eval()
    ml.add_adapter(tiny_model, "a", rank=2, alpha=1.0, target_modules=["to_q"], dropout=0.5)
    assert not any(m.training for m in tiny_model.modules())
    ml.set_scale(tiny_model, "a", 0.0)  # trainable, but eval: "auto" skips the branch
    calls = []
    tiny_model.transformer_blocks[0].attn1.to_q.lora_A["a"].register_forward_hook(lambda *a: calls.append(1))
    tiny_model(torch.randn(1, 2, 16))
    assert calls == []
