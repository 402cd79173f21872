"""Inference with constant gates costs the stock model: content merged, motion skipped, then restored.

Oracle: the same model with its adapters as branches (unmerged). After the call every weight is
bit-identical to before, and no LoRA kernel ran inside.
"""

from __future__ import annotations

import pytest
import torch

import multi_lora as ml
from layerflow.layout import LayerLayout
from layerflow.models.adapters import (
    ATTENTION_PROJECTIONS,
    CONTENT,
    MOTION,
    merged_for_inference,
    set_inference_gates,
)
from layerflow.testing import TINY_TEXT_LENGTH, build_tiny_pipeline, build_tiny_transformer, single_thread


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def _with_adapters(model: torch.nn.Module, gate_mode: str = "auto") -> torch.nn.Module:
    """Motion and content adapters as ``add_layerflow_adapters`` makes them, with a chosen gate mode."""
    for name, rank in ((MOTION, 2), (CONTENT, 4)):
        config = ml.AdapterConfig(
            rank=rank, alpha=1.0, target_modules=list(ATTENTION_PROJECTIONS), gate_mode=gate_mode
        )
        ml.add_adapter(model, name, config)
    set_inference_gates(model)
    generator = torch.Generator().manual_seed(5)
    for name in ml.list_adapters(model):
        for layer in ml.adapter_layers(model, name).values():
            lora_b = layer.lora_pair(name)[1].weight
            lora_b.data = torch.randn(lora_b.shape, generator=generator) * 0.2
    return model.eval()


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _lora_calls(model: torch.nn.Module) -> tuple[list[str], list]:
    calls: list[str] = []
    handles = []
    for name in ml.list_adapters(model):
        for layer in ml.adapter_layers(model, name).values():
            lora_a = layer.lora_pair(name)[0]
            handles.append(lora_a.register_forward_hook(lambda *_, name=name: calls.append(name)))
    return calls, handles


def _inputs():
    generator = torch.Generator().manual_seed(1)
    video = torch.randn(2, 2, 4, 4, 4, generator=generator)
    text = torch.randn(2, TINY_TEXT_LENGTH, 16, generator=generator)
    return video, text, torch.tensor([900, 20])


@torch.no_grad()
def test_merged_call_matches_branches_and_restores_weights_bit_exactly():
    model = _with_adapters(build_tiny_transformer(num_layers=2), gate_mode="dense")
    video, text, t = _inputs()
    calls, handles = _lora_calls(model)
    unmerged = model(video, text, t).sample
    assert set(calls) == {"content", "motion"}  # dense mode: the off motion gate still runs as a branch
    before = _snapshot(model)
    calls.clear()
    with merged_for_inference(model) as merged:
        assert merged == ["content"]
        assert not any(layer.enabled[MOTION] for layer in ml.adapter_layers(model, MOTION).values())
        inside = model(video, text, t).sample
    assert calls == []  # no LoRA kernel ran inside
    torch.testing.assert_close(inside, unmerged, atol=1e-5, rtol=1e-5)
    after = _snapshot(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    for name in ml.list_adapters(model):
        for layer in ml.adapter_layers(model, name).values():
            assert layer.enabled[name] and not layer.merged_adapters and layer.kept_weight is None
    for handle in handles:
        handle.remove()


def test_restores_on_error_and_leaves_training_grad_and_per_sample_gates_alone():
    model = _with_adapters(build_tiny_transformer(num_layers=1))
    before = _snapshot(model)
    with torch.no_grad(), pytest.raises(RuntimeError, match="boom"), merged_for_inference(model):
        raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in _snapshot(model).items())
    with merged_for_inference(model) as merged:  # grad mode on
        assert merged == []
    with torch.no_grad():
        model.train()
        with merged_for_inference(model) as merged:
            assert merged == []
        model.eval()
        ml.set_scale(model, "content", torch.tensor([1.0, 0.5]))
        with merged_for_inference(model) as merged:
            assert merged == []


def test_pipeline_merges_for_the_call_and_matches_the_branch_path(monkeypatch):
    pipe = build_tiny_pipeline(LayerLayout.official("rgb"))
    pipe.set_progress_bar_config(disable=True)
    _with_adapters(pipe.transformer)
    merges: list[str] = []
    original = ml.MultiLoraLinear.merge
    monkeypatch.setattr(
        ml.MultiLoraLinear,
        "merge",
        lambda self, name, **kw: (merges.append(name), original(self, name, **kw)),
    )
    before = _snapshot(pipe.transformer)

    def run():
        return pipe(
            {"foreground": "a red circle", "background": "blue stripes", "composite": "a red circle"},
            "generate",
            num_frames=8,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        ).latents

    merged_run = run()
    assert merges and set(merges) == {"content"}
    after = _snapshot(pipe.transformer)
    assert all(torch.equal(after[k], before[k]) for k in before)
    # oracle: the same gates as a per-sample tensor cannot be merged, so the content LoRA runs as a branch
    ml.set_scale(pipe.transformer, "content", torch.tensor([1.0]))
    merges.clear()
    branch_run = run()
    assert merges == []
    torch.testing.assert_close(merged_run, branch_run, atol=1e-5, rtol=1e-5)


def test_from_pretrained_loads_saved_adapters_unless_asked_not_to(tmp_path):
    from safetensors.torch import load_file

    from layerflow.models import LayerFlowTransformer3DModel

    model = _with_adapters(build_tiny_transformer(num_layers=1))
    model.save_pretrained(tmp_path / "t")
    loaded = LayerFlowTransformer3DModel.from_pretrained(tmp_path / "t")
    assert sorted(ml.list_adapters(loaded)) == [CONTENT, MOTION]
    video, text, steps = _inputs()
    assert torch.equal(
        loaded(video, text, steps, return_dict=False)[0], model(video, text, steps, return_dict=False)[0]
    )
    bare = LayerFlowTransformer3DModel.from_pretrained(tmp_path / "t", load_adapters=False)
    assert ml.list_adapters(bare) == []
    stored = load_file(
        str(tmp_path / "t" / "diffusion_pytorch_model.safetensors")
    )  # the stock folder's weights
    assert bare.state_dict().keys() == stored.keys()
    assert all(torch.equal(value, stored[name]) for name, value in bare.state_dict().items())
