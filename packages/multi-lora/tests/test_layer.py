"""MultiLoraLinear against peft's LoRA and against its own contracts (gates, merge, compile)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

import multi_lora as ml

peft = pytest.importorskip("peft")


class CountMatmuls(TorchDispatchMode):
    """Counts the matrix-multiply kernels that actually run."""

    OPS = ("mm", "addmm", "bmm", "matmul", "linear", "addmv", "mv")

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _linear_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 6))


def _copy_into_peft(ours: nn.Module, theirs: nn.Module, name: str) -> None:
    state = {
        key.replace(f".lora_A.{name}.", ".lora_A.default.").replace(
            f".lora_B.{name}.", ".lora_B.default."
        ): value
        for key, value in ours.state_dict().items()
        if f".{name}." in key
    }
    missing = set(state) - set(theirs.state_dict())
    assert not missing, missing
    theirs.load_state_dict(state, strict=False)


@pytest.mark.parametrize("use_rslora", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_matches_peft_forward_and_grads(randomize, use_rslora, scale):
    base = _linear_model()
    ours = copy.deepcopy(base).requires_grad_(False)  # peft freezes the base model too
    ml.add_adapter(ours, "a", rank=4, alpha=3.0, target_modules=["0", "2"], use_rslora=use_rslora)
    randomize(ours)
    ml.set_scale(ours, "a", scale)
    config = peft.LoraConfig(r=4, lora_alpha=3.0, target_modules=["0", "2"], use_rslora=use_rslora)
    theirs = peft.inject_adapter_in_model(config, copy.deepcopy(base))
    _copy_into_peft(ours, theirs, "a")
    for module in theirs.modules():
        if hasattr(module, "set_scale") and hasattr(module, "lora_A"):
            module.set_scale("default", scale)

    x = torch.randn(5, 3, 12)
    ours_out, theirs_out = ours(x), theirs(x)
    torch.testing.assert_close(ours_out, theirs_out, rtol=1e-5, atol=1e-6)
    ours_out.square().sum().backward()
    theirs_out.square().sum().backward()
    ours_grads = {
        k.replace(".a.", ".default."): p.grad for k, p in ours.named_parameters() if p.grad is not None
    }
    theirs_grads = {k: p.grad for k, p in theirs.named_parameters() if p.grad is not None}
    assert set(ours_grads) == set(theirs_grads) and len(ours_grads) == 4
    for key, grad in ours_grads.items():
        torch.testing.assert_close(grad, theirs_grads[key], rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
def test_two_adapters_match_peft(randomize):
    base = _linear_model()
    ours = copy.deepcopy(base)
    ml.add_adapter(ours, "motion", rank=2, alpha=1.0, target_modules=["0", "2"])
    ml.add_adapter(ours, "content", rank=6, alpha=1.0, target_modules=["0", "2"])
    randomize(ours)
    theirs = copy.deepcopy(base)
    for name, rank in (("motion", 2), ("content", 6)):
        theirs = peft.inject_adapter_in_model(
            peft.LoraConfig(r=rank, lora_alpha=1.0, target_modules=["0", "2"]), theirs, adapter_name=name
        )
    theirs.load_state_dict({k: v for k, v in ours.state_dict().items() if ".lora_" in k}, strict=False)
    for module in theirs.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.set_adapter(["motion", "content"])
    x = torch.randn(7, 12)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_per_sample_gates_equal_separate_scalar_runs(randomize):
    model = _linear_model()
    ml.add_adapter(model, "motion", rank=3, alpha=1.0, target_modules=["0", "2"])
    ml.add_adapter(model, "content", rank=5, alpha=1.0, target_modules=["0", "2"])
    randomize(model)
    gates = torch.tensor([1.0, 0.0, 0.25, -0.5])
    x = torch.randn(4, 9, 12)
    ml.set_scale(model, "motion", gates)
    mixed = model(x)
    for i, gate in enumerate(gates.tolist()):
        ml.set_scale(model, "motion", gate)
        torch.testing.assert_close(mixed[i : i + 1], model(x[i : i + 1]), rtol=1e-5, atol=1e-6)


def test_per_sample_gate_follows_batch_major_folding(randomize):
    model = _linear_model()
    ml.add_adapter(model, "a", rank=3, alpha=1.0, target_modules=["0", "2"])
    randomize(model)
    batch, frames = 2, 3
    x = torch.randn(batch * frames, 12)  # [(b f), features], b-major
    ml.set_scale(model, "a", torch.tensor([0.0, 1.0]))
    folded = model(x)
    ml.set_scale(model, "a", torch.tensor([0.0] * frames + [1.0] * frames))
    torch.testing.assert_close(folded, model(x))
    ml.set_scale(model, "a", torch.tensor([1.0, 0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="multiple of 4"):
        model(x)


def test_gate_zero_is_base_layer_and_runs_no_lora_kernel(randomize):
    model = _linear_model()
    reference = copy.deepcopy(model)
    ml.add_adapter(model, "a", rank=3, alpha=1.0, target_modules=["0", "2"], gate_mode="skip")
    randomize(model)
    lora_calls = []
    for layer in ml.adapter_layers(model, "a").values():
        layer.lora_A["a"].register_forward_hook(lambda *args: lora_calls.append(1))
    ml.set_scale(model, "a", 0.0)
    x = torch.randn(4, 12, requires_grad=True)
    with CountMatmuls() as counter:
        out = model(x)
    assert torch.equal(out, reference(x))
    assert counter.count == 2  # the two base Linears, nothing else
    assert lora_calls == []
    out.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if ".lora_" in n)
    # Sanity check of the counter: a live adapter adds two GEMMs per layer.
    ml.set_scale(model, "a", 1.0)
    with CountMatmuls() as counter:
        model(x)
    assert counter.count == 6 and len(lora_calls) == 2


def test_disabled_adapter_runs_no_kernel_even_when_trainable(randomize):
    model = _linear_model()
    ml.add_adapter(model, "a", rank=3, alpha=1.0, target_modules=["0", "2"])
    randomize(model)
    ml.disable_adapter(model, "a")
    with CountMatmuls() as counter:
        model(torch.randn(2, 12))
    assert counter.count == 2


def test_dense_mode_multiplies_by_zero_and_keeps_parameters_used(randomize):
    model = _linear_model()
    reference = copy.deepcopy(model)
    ml.add_adapter(model, "a", rank=3, alpha=1.0, target_modules=["0", "2"])  # auto: dense when training
    randomize(model)
    ml.set_scale(model, "a", 0.0)
    x = torch.randn(4, 12)
    out = model(x)
    torch.testing.assert_close(out, reference(x))
    out.sum().backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if ".lora_" in n]
    assert len(lora_grads) == 4 and all(g is not None and not g.any() for g in lora_grads)
    model.eval()  # auto mode skips at inference
    with CountMatmuls() as counter:
        model(x)
    assert counter.count == 2


def test_toggling_never_changes_requires_grad(tiny_model):
    ml.add_adapter(tiny_model, "motion", rank=2, alpha=1.0, target_modules=["to_q"], trainable=False)
    ml.add_adapter(tiny_model, "content", rank=4, alpha=1.0, target_modules=["to_q"])

    def flags():
        return {n: p.requires_grad for n, p in tiny_model.named_parameters() if ".lora_" in n}

    before = flags()
    assert not any(v for k, v in before.items() if ".motion." in k)
    assert all(v for k, v in before.items() if ".content." in k)
    for step in (
        lambda: ml.disable_adapter(tiny_model, "motion"),
        lambda: ml.enable_adapter(tiny_model, "motion"),
        lambda: ml.set_scale(tiny_model, "motion", 1.0),
        lambda: ml.set_scale(tiny_model, "content", torch.ones(2)),
        lambda: ml.disable_adapter(tiny_model, "content"),
        lambda: ml.enable_adapter(tiny_model, "content"),
    ):
        step()
        assert flags() == before
    ml.set_trainable(tiny_model, "motion", True)
    assert all(flags().values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_unmerge(randomize, dtype):
    model = _linear_model().to(dtype)
    ml.add_adapter(model, "a", rank=3, alpha=2.0, target_modules=["0", "2"])
    ml.add_adapter(model, "b", rank=2, alpha=1.0, target_modules=["0"])
    randomize(model)
    ml.set_scale(model, "a", 0.7)
    originals = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer.weight" in n}
    x = torch.randn(3, 12, dtype=dtype)
    unmerged_out = model(x)
    ml.merge_adapter(model, "a", keep_copy=True)
    ml.merge_adapter(model, "b", keep_copy=True)
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(model(x), unmerged_out, **tolerance)
    with pytest.raises(RuntimeError, match="merged"):
        ml.set_scale(model, "a", 1.0)
    ml.unmerge_adapter(model, "a")
    ml.unmerge_adapter(model, "b")
    for name, weight in originals.items():
        assert torch.equal(model.get_parameter(name), weight), name  # exact with the kept copy
    # Without a kept copy: fp32 delta subtraction, exact up to rounding of the base dtype.
    for _ in range(10):
        ml.merge_adapter(model, "a")
        ml.unmerge_adapter(model, "a")
    for name, weight in originals.items():
        drift = (model.get_parameter(name).float() - weight.float()).abs().max().item()
        assert drift <= (1e-6 if dtype == torch.float32 else 0.05), (name, drift)


def test_merge_refuses_per_sample_gate(randomize):
    model = _linear_model()
    ml.add_adapter(model, "a", rank=3, alpha=1.0, target_modules=["0"])
    ml.set_scale(model, "a", torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="per-sample"):
        ml.merge_adapter(model, "a")


def test_checkpointed_per_sample_gates_match_plain(randomize, tiny_model):
    ml.add_adapter(
        tiny_model, "motion", rank=2, alpha=1.0, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
    )
    ml.add_adapter(tiny_model, "content", rank=4, alpha=1.0, target_modules=["to_q", "to_v"])
    randomize(tiny_model)
    checkpointed = copy.deepcopy(tiny_model)
    ml.set_scale(tiny_model, "motion", torch.tensor([1.0, 0.0, 0.5]))
    ml.set_scale(checkpointed, "motion", torch.tensor([1.0, 0.0, 0.5]))
    x = torch.randn(3, 5, 16)

    def run_checkpointed(inputs):
        hidden = checkpointed.proj_in(inputs)
        for block in checkpointed.transformer_blocks:
            hidden = checkpoint(block, hidden, use_reentrant=False)
        return hidden

    plain_out = tiny_model(x)
    checkpointed_out = run_checkpointed(x)
    torch.testing.assert_close(plain_out, checkpointed_out)
    plain_out.square().mean().backward()
    checkpointed_out.square().mean().backward()
    plain_grads = dict(ml.trainable_parameters(tiny_model))
    for name, parameter in ml.trainable_parameters(checkpointed).items():
        torch.testing.assert_close(parameter.grad, plain_grads[name].grad, rtol=1e-5, atol=1e-6)


def test_compile_does_not_recompile_when_gate_values_change(randomize):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    layer = nn.Sequential(nn.Linear(8, 8))
    ml.add_adapter(layer, "a", rank=2, alpha=1.0, target_modules=["0"])
    randomize(layer)
    counter = CompileCounter()
    compiled = torch.compile(layer, backend=counter)
    x = torch.randn(2, 8)
    with torch.no_grad():
        ml.set_scale(layer, "a", 0.5)
        first = compiled(x)
        ml.set_scale(layer, "a", 0.25)
        second = compiled(x)
        ml.set_scale(layer, "a", 2.0)
        third = compiled(x)
        assert counter.frame_count == 1
        torch.testing.assert_close(third, layer(x))
        assert not torch.allclose(first, second)
        ml.set_scale(layer, "a", torch.tensor([1.0, 0.0]))
        compiled(x)
        frames = counter.frame_count
        ml.set_scale(layer, "a", torch.tensor([0.3, 0.9]))
        out = compiled(x)
        ml.set_scale(layer, "a", torch.tensor([-1.0, 2.0]))
        compiled(x)
        assert counter.frame_count == frames  # per-sample values changed in place: no recompile
        ml.set_scale(layer, "a", torch.tensor([0.3, 0.9]))
        torch.testing.assert_close(out, layer(x))
    torch._dynamo.reset()
