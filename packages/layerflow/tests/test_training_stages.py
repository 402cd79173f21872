"""Per-stage trainable sets, counted against the module shapes, and the per-sample motion gate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import multi_lora
from layerflow.testing import build_tiny_transformer
from layerflow.training.config import load_config
from layerflow.training.stages import CONTENT, MOTION, StagePlan, apply_stage, chosen_blocks, set_motion_gate

TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")


def lora_size(transformer: torch.nn.Module, blocks: list[int], rank: int) -> int:
    """Hand count: rank * (in + out) for every target Linear of the chosen blocks."""
    total = 0
    for index in blocks:
        block = transformer.transformer_blocks[index]
        for target in TARGETS:
            linear = block.get_submodule(target)
            linear = getattr(linear, "base_layer", linear)
            total += rank * (linear.in_features + linear.out_features)
    return total


def test_chosen_blocks_every_sixth_ending_at_the_last() -> None:
    assert chosen_blocks(30, 6) == [5, 11, 17, 23, 29]
    assert chosen_blocks(12, 6) == [5, 11]
    assert chosen_blocks(3, 2) == [0, 2]
    assert chosen_blocks(1, 6) == [0]
    with pytest.raises(ValueError):
        chosen_blocks(0, 6)


def stage_config(stage: int, **model: object):
    return load_config(None, stage, {"model": {"motion_rank": 2, "content_rank": 4, **model}})


def test_stage1_trains_the_chosen_blocks_and_the_layer_embedder() -> None:
    transformer = build_tiny_transformer(num_layers=3)
    config = stage_config(1, block_interval=2, stage1_trains="blocks")  # the paper's recipe
    plan = StagePlan.from_config(config, transformer)
    trained = apply_stage(transformer, config, plan)
    assert plan.blocks == (0, 2)
    blocks = transformer.transformer_blocks
    expected = sum(p.numel() for i in (0, 2) for p in blocks[i].parameters())
    expected += sum(p.numel() for p in transformer.patch_embed.layer_embedder.parameters())
    assert sum(p.numel() for p in trained.values()) == expected
    assert all(
        name.startswith(("transformer_blocks.0.", "transformer_blocks.2.", "patch_embed.layer_embedder."))
        for name in trained
    )
    assert not any(p.requires_grad for p in blocks[1].parameters())
    assert not transformer.proj_out.weight.requires_grad


def test_stage1_trains_everything_for_a_base_from_random_weights() -> None:
    transformer = build_tiny_transformer(num_layers=3)
    config = stage_config(1, block_interval=2, stage1_trains="all")
    trained = apply_stage(transformer, config, StagePlan.from_config(config, transformer))
    assert set(trained) == {name for name, _ in transformer.named_parameters()}
    assert transformer.proj_out.weight.requires_grad and transformer.patch_embed.proj.weight.requires_grad
    # The LoRA stages still place their adapters on the block_interval blocks only.
    stage2 = stage_config(2, block_interval=2, stage1_trains="all")
    trained = apply_stage(transformer, stage2, StagePlan.from_config(stage2, transformer))
    assert {int(n.split(".")[1]) for n in trained} == {0, 2}


def test_stage1_trains_names_its_choices() -> None:
    from layerflow.training.config import ConfigError

    with pytest.raises(ConfigError, match=r"model.stage1_trains.*'blocks', 'all'"):
        stage_config(1, stage1_trains="everything")


def test_stage2_trains_only_the_motion_lora_on_one_sixth_of_the_blocks() -> None:
    transformer = build_tiny_transformer(num_layers=30)  # the 2B block count, tiny widths
    config = stage_config(2, block_interval=6)
    plan = StagePlan.from_config(config, transformer)
    trained = apply_stage(transformer, config, plan)
    assert plan.blocks == (5, 11, 17, 23, 29)
    assert multi_lora.list_adapters(transformer) == [MOTION]
    assert sum(p.numel() for p in trained.values()) == lora_size(transformer, [5, 11, 17, 23, 29], rank=2)
    assert all(".lora_" in n and f".{MOTION}." in n for n in trained)
    assert {int(n.split(".")[1]) for n in trained} == {5, 11, 17, 23, 29}


def test_stage3_trains_only_the_content_lora_with_the_motion_lora_frozen() -> None:
    transformer = build_tiny_transformer(num_layers=3)
    stage2 = stage_config(2, block_interval=2)
    apply_stage(transformer, stage2, StagePlan.from_config(stage2, transformer))
    stage3 = stage_config(3, block_interval=2)
    trained = apply_stage(transformer, stage3, StagePlan.from_config(stage3, transformer))
    assert sorted(multi_lora.list_adapters(transformer)) == [CONTENT, MOTION]
    assert sum(p.numel() for p in trained.values()) == lora_size(transformer, [0, 2], rank=4)
    assert all(f".{CONTENT}." in n for n in trained)
    assert multi_lora.trainable_parameters(transformer, MOTION) == {}
    motion = sum(p.numel() for n, p in transformer.named_parameters() if f".{MOTION}." in n)
    assert motion == lora_size(transformer, [0, 2], rank=2)


def test_explicit_layer_embedder_training_in_a_lora_stage() -> None:
    transformer = build_tiny_transformer(num_layers=3)
    config = stage_config(3, block_interval=2, train_layer_embedder=True)
    trained = apply_stage(transformer, config, StagePlan.from_config(config, transformer))
    embedder = sum(p.numel() for p in transformer.patch_embed.layer_embedder.parameters())
    assert sum(p.numel() for p in trained.values()) == lora_size(transformer, [0, 2], rank=4) + embedder


def test_per_sample_motion_gate_follows_sample_sources(tmp_path: Path) -> None:
    """A batch of one static and one video sample: the motion LoRA acts on the static one only."""
    from layerflow.data import collate_layered
    from layerflow.training.datasets import FrozenFrames, build_source
    from layerflow.training.testing import tiny_test_config

    config = tiny_test_config(tmp_path, 1, {"data": {"sources": [{"kind": "synthetic", "num_samples": 4}]}})
    videos = build_source(config, config.data.sources[0])
    video = next(videos[i] for i in range(len(videos)) if videos[i].source == "video")
    static = FrozenFrames(videos)[0]
    batch = collate_layered([static, video])
    assert batch.sources == ["static", "video"]

    transformer = build_tiny_transformer(num_layers=3)
    stage2 = stage_config(2, block_interval=2)
    apply_stage(transformer, stage2, StagePlan.from_config(stage2, transformer))
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # a trained (non-zero) motion LoRA
    set_motion_gate(transformer, batch.is_static)
    assert torch.equal(multi_lora.get_scale(transformer, MOTION), torch.tensor([1.0, 0.0]))

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 8, 4, 4, 4, generator=generator)
    text = torch.randn(2, 3 * 12, 16, generator=generator)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        gated = transformer(hidden, text, t, num_clips=4, return_dict=False)[0]
        multi_lora.set_scale(transformer, MOTION, 1.0)
        on = transformer(hidden, text, t, num_clips=4, return_dict=False)[0]
        multi_lora.set_scale(transformer, MOTION, 0.0)
        off = transformer(hidden, text, t, num_clips=4, return_dict=False)[0]
    torch.testing.assert_close(gated[0], on[0])
    torch.testing.assert_close(gated[1], off[1])
    assert not torch.allclose(on[0], off[0], atol=1e-4)
