"""The CogVideoX processor against diffusers' stock `CogVideoXAttnProcessor2_0` on a tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import CogVideoXTransformer3DModel
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

from layer_attention import SegmentLayout
from layer_attention.diffusers import LayerAttentionProcessor
from layer_attention.testing import conditional_layout

FRAMES, SIDE, TEXT = 2, 8, 8  # 2 latent frames of 8x8 latents, patch 2: 2 x 16 video tokens
VIDEO_TOKENS = FRAMES * (SIDE // 2) ** 2


def _tiny_model() -> CogVideoXTransformer3DModel:
    torch.manual_seed(0)
    return CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
        text_embed_dim=32, num_layers=2, sample_width=SIDE, sample_height=SIDE, sample_frames=5,
        max_text_seq_length=TEXT,
    ).eval()  # fmt: skip


def _inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(1)
    video = torch.randn(batch, FRAMES, 4, SIDE, SIDE, generator=generator)
    text = torch.randn(batch, TEXT, 32, generator=generator)
    return video, text, torch.tensor([500, 20][:batch])


def _run(model, attention_kwargs=None):
    video, text, timestep = _inputs()
    return model(video, text, timestep, attention_kwargs=attention_kwargs, return_dict=False)[0]


def test_full_attention_matches_stock_processor_forward_and_backward():
    stock = _tiny_model()
    ours = copy.deepcopy(stock)
    ours.set_attn_processor(LayerAttentionProcessor())
    assert all(isinstance(p, CogVideoXAttnProcessor2_0) for p in stock.attn_processors.values())
    for kwargs in (None, {"layout": SegmentLayout([TEXT, VIDEO_TOKENS])}):
        want, got = _run(stock), _run(ours, kwargs)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    _run(stock).square().mean().backward()
    _run(ours).square().mean().backward()
    for (name, a), (_, b) in zip(stock.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(
            b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_layout_from_attention_kwargs_matches_stock_with_dense_mask():
    """A conditional layout (clean clip 0 sees text + itself) equals the stock processor given its dense mask."""
    layout = conditional_layout(1, FRAMES, VIDEO_TOKENS // FRAMES, condition_clips=(0,), text_tokens=TEXT)
    stock = _tiny_model()
    ours = copy.deepcopy(stock)
    ours.set_attn_processor(LayerAttentionProcessor(backend="sdpa"))
    mask = layout.dense_mask()[None].expand(2, -1, -1)
    want = _run(stock, {"attention_mask": mask})
    got = _run(ours, {"layout": layout})
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, _run(stock), atol=1e-3)  # the layout really masks something


def test_rope_on_video_tokens_matches_stock():
    attn = _tiny_model().transformer_blocks[0].attn1
    generator = torch.Generator().manual_seed(3)
    video = torch.randn(2, VIDEO_TOKENS, 32, generator=generator)
    text = torch.randn(2, TEXT, 32, generator=generator)
    angles = torch.randn(VIDEO_TOKENS, 16, generator=generator)
    rotary = (angles.cos(), angles.sin())
    want = CogVideoXAttnProcessor2_0()(attn, video, text, image_rotary_emb=rotary)
    got = LayerAttentionProcessor()(attn, video, text, image_rotary_emb=rotary)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_processor_rejects_mismatched_layout_and_masks():
    attn = _tiny_model().transformer_blocks[0].attn1
    video, text = torch.randn(1, VIDEO_TOKENS, 32), torch.randn(1, TEXT, 32)
    with pytest.raises(ValueError, match=r"layout covers 30 tokens .* 40 = 8 text \+ 32 video tokens"):
        LayerAttentionProcessor()(attn, video, text, layout=SegmentLayout([10, 20]))
    with pytest.raises(ValueError, match="takes no attention_mask"):
        LayerAttentionProcessor()(attn, video, text, attention_mask=torch.ones(1, 40, 40, dtype=torch.bool))
