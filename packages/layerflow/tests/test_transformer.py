import subprocess
import sys

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from layerflow.models import LayerFlowTransformer3DModel
from layerflow.testing import build_tiny_transformer, tiny_transformer_config

STOCK_KEYS = {
    k: v
    for k, v in tiny_transformer_config().items()
    if k not in ("num_layer_prompts", "layer_embedder", "position_mode", "learned_position_frames")
}
TEXT = STOCK_KEYS["max_text_seq_length"]
WIDTH = STOCK_KEYS["text_embed_dim"]


def _stock(**overrides) -> CogVideoXTransformer3DModel:
    torch.manual_seed(0)
    return CogVideoXTransformer3DModel(**{**STOCK_KEYS, **overrides}).eval()


def _inputs(batch=2, frames=2, prompts=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, frames, 4, 4, 4, generator=g)
    text = torch.randn(batch, prompts * TEXT, WIDTH, generator=g)
    return video, text, torch.tensor([999, 19][:batch])


@torch.no_grad()
def test_one_clip_zero_layer_embedding_equals_stock_exactly():
    stock = _stock()
    model = LayerFlowTransformer3DModel(**tiny_transformer_config()).eval()
    missing = model.load_state_dict(stock.state_dict(), strict=False).missing_keys
    assert all(k.startswith("patch_embed.layer_embedder") for k in missing)
    video, text, t = _inputs()
    assert torch.equal(model(video, text, t).sample, stock(video, text, t).sample)


@torch.no_grad()
def test_continuous_clips_equal_stock_fed_the_same_frames():
    stock = _stock(max_text_seq_length=3 * TEXT)  # the stock model with its text block widened to 3 prompts
    model = LayerFlowTransformer3DModel(**tiny_transformer_config()).eval()
    model.load_state_dict(stock.state_dict(), strict=False)
    video, text, t = _inputs(frames=8, prompts=3)
    ours = model(video, text, t, num_clips=4).sample
    assert torch.equal(ours, stock(video, text, t).sample)


@torch.no_grad()
def test_per_clip_positions_repeat_and_continuous_do_not():
    per_clip = LayerFlowTransformer3DModel(**tiny_transformer_config(position_mode="per_clip")).eval()
    continuous = LayerFlowTransformer3DModel(**tiny_transformer_config()).eval()
    text = torch.zeros(1, TEXT, WIDTH)
    video = torch.zeros(1, 6, 4, 4, 4)
    for model in (per_clip, continuous):
        torch.nn.init.zeros_(model.patch_embed.proj.bias)
        torch.nn.init.zeros_(model.patch_embed.text_proj.bias)
    with per_clip.patch_embed.clips(3):
        positions = per_clip.patch_embed(text, video)[0, TEXT:].reshape(3, -1, 16)
    assert torch.equal(positions[0], positions[1]) and torch.equal(positions[0], positions[2])
    assert positions.abs().sum() > 0
    ordered = continuous.patch_embed(text, video)[0, TEXT:].reshape(3, -1, 16)
    assert torch.equal(ordered[0], positions[0]) and not torch.equal(ordered[1], positions[1])
    with pytest.raises(ValueError, match="equal clips"), per_clip.patch_embed.clips(4):
        per_clip.patch_embed(text, video)


@torch.no_grad()
def test_layer_embedding_is_added_to_the_text_tokens_of_each_prompt():
    model = build_tiny_transformer()
    embed = model.patch_embed
    video, text, _ = _inputs(batch=1, prompts=3)
    joint = embed(text, video)
    table = embed.layer_embedder.layer_table()
    added = joint[0, : 3 * TEXT] - embed.text_proj(text)[0]
    expected = table[:3].repeat_interleave(TEXT, dim=0)
    torch.testing.assert_close(added, expected)
    assert not torch.allclose(table[0], table[1])


def test_text_length_errors_are_clear():
    model = build_tiny_transformer()
    video = torch.zeros(1, 2, 4, 4, 4)
    with pytest.raises(ValueError, match="whole number"):
        model(video, torch.zeros(1, TEXT + 1, WIDTH), torch.tensor([1]))
    with pytest.raises(ValueError, match="4 prompt slots"):
        model(video, torch.zeros(1, 5 * TEXT, WIDTH), torch.tensor([1]))


@torch.no_grad()
def test_loads_a_stock_directory_and_materialises_new_modules(tmp_path):
    stock = _stock(max_text_seq_length=3 * TEXT)
    stock_small = _stock()
    stock_small.save_pretrained(tmp_path / "stock")
    model = LayerFlowTransformer3DModel.from_pretrained(tmp_path / "stock", num_layer_prompts=3)
    params = list(model.patch_embed.layer_embedder.parameters())
    assert all(p.device.type == "cpu" for p in params)
    assert model.patch_embed.layer_embedder(torch.arange(3)).abs().max() == 0
    stock.load_state_dict(stock_small.state_dict())
    video, text, t = _inputs(frames=6, prompts=3)
    assert torch.equal(model(video, text, t, num_clips=3).sample, stock(video, text, t).sample)


LOAD_STOCK = """
import sys, torch
from layerflow.models import LayerFlowTransformer3DModel
torch.manual_seed(int(sys.argv[2]))
expected = torch.rand(3)
torch.manual_seed(int(sys.argv[2]))
model = LayerFlowTransformer3DModel.from_pretrained(sys.argv[1], num_layer_prompts=3)
weight = model.patch_embed.layer_embedder.embed[0].weight
print(weight.flatten()[:8].tolist(), torch.equal(torch.rand(3), expected))
"""


def test_a_stock_directory_loads_the_same_new_modules_in_every_fresh_process(tmp_path):
    """The layer embedder's random input projection (official "linear" kind) is drawn from a fixed seed,
    not from whatever the process's RNG holds, and the caller's RNG stream is left where it was: two
    fine-tunes of one stock checkpoint start from the same model (they differed run to run before)."""
    _stock().save_pretrained(tmp_path / "stock")
    runs = [
        subprocess.run(
            [sys.executable, "-c", LOAD_STOCK, str(tmp_path / "stock"), str(seed)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()[-1]
        for seed in (1, 2)
    ]
    assert runs[0] == runs[1] and runs[0].endswith(" True")
    assert "0.0, 0.0" not in runs[0]  # a real random projection (the LayerNorm after it starts at zero)


@torch.no_grad()
def test_learned_position_table_round_trips_and_starts_as_sincos(tmp_path):
    learned = build_tiny_transformer(learned_position_frames=6, num_layer_prompts=3)
    plain = build_tiny_transformer(num_layer_prompts=3)
    assert learned.patch_embed.position_table.shape == (1, 3 * TEXT + 6 * 4, 16)
    video, text, t = _inputs(frames=6, prompts=3)
    torch.testing.assert_close(
        learned(video, text, t).sample, plain(video, text, t).sample, rtol=0, atol=1e-6
    )
    learned.patch_embed.position_table.add_(0.1)
    learned.save_pretrained(tmp_path / "learned")
    loaded = LayerFlowTransformer3DModel.from_pretrained(tmp_path / "learned")
    assert torch.equal(loaded.patch_embed.position_table, learned.patch_embed.position_table)
    assert torch.equal(loaded(video, text, t).sample, learned(video, text, t).sample)
    with pytest.raises(ValueError, match="covers 24 video tokens"):
        learned(torch.zeros(1, 8, 4, 4, 4), text[:1], t[:1])
    with pytest.raises(ValueError, match="continuous"):
        LayerFlowTransformer3DModel(
            **tiny_transformer_config(learned_position_frames=2, position_mode="per_clip")
        )


@torch.no_grad()
def test_layer_attention_processor_and_adapters_round_trip(tmp_path):
    import multi_lora as ml
    from layerflow.models.adapters import OFFICIAL_TRAINED_BLOCKS, add_layerflow_adapters
    from layerflow.models.attention import uses_layer_attention

    model = build_tiny_transformer(num_layers=6)
    assert uses_layer_attention(model)
    add_layerflow_adapters(model, motion_rank=2, content_rank=4, layers=OFFICIAL_TRAINED_BLOCKS)
    assert sorted(ml.adapter_layers(model, "content")) == [
        f"transformer_blocks.5.attn1.{p}" for p in ("to_k", "to_out.0", "to_q", "to_v")
    ]
    for layer in ml.adapter_layers(model, "content").values():  # give the zero-init B weights values
        torch.nn.init.normal_(layer.lora_pair("content")[1].weight)
    video, text, t = _inputs(prompts=3)
    expected = model(video, text, t).sample
    model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model" / "adapters").iterdir()) == ["content", "motion"]
    loaded = LayerFlowTransformer3DModel.from_pretrained(tmp_path / "model")
    assert ml.get_scale(loaded, "motion") == 0.0 and ml.get_scale(loaded, "content") == 1.0
    torch.testing.assert_close(loaded(video, text, t).sample, expected, rtol=0, atol=1e-6)
    ml.disable_adapter(loaded, "content")
    assert not torch.allclose(loaded(video, text, t).sample, expected)
