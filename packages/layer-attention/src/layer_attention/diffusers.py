"""A diffusers attention processor for CogVideoX that runs :func:`layer_attention`.

Install it with ``transformer.set_attn_processor(LayerAttentionProcessor())`` and pass the layout
per call: ``transformer(..., attention_kwargs={"layout": layout})``. diffusers forwards
``attention_kwargs`` to every block's ``attn1``, whose ``Attention.forward`` keeps the keywords the
processor's ``__call__`` accepts, so ``layout`` reaches this processor. The layout describes the whole
joint sequence: the text segments, then the video segments.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from .functional import layer_attention
from .layout import SegmentLayout


class LayerAttentionProcessor:
    """Drop-in for ``CogVideoXAttnProcessor2_0``: joint text + video, per-head QK LayerNorm, RoPE on video.

    Args:
        backend: passed to :func:`layer_attention` (``"auto"`` by default).

    Without a ``layout`` the processor runs full attention, matching the stock processor.
    """

    def __init__(self, backend: str = "auto"):
        self.backend = backend

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None = None,
        layout: SegmentLayout | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None:
            raise ValueError(
                "LayerAttentionProcessor takes no attention_mask; describe the mask with a SegmentLayout "
                "(attention_kwargs={'layout': ...})"
            )
        text_len = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch, seq_len, _ = hidden_states.shape
        if layout is not None and layout.seq_len != seq_len:
            raise ValueError(
                f"layout covers {layout.seq_len} tokens (segments {list(layout.lengths)}) but the joint "
                f"sequence has {seq_len} = {text_len} text + {seq_len - text_len} video tokens"
            )

        # 1. projections to [B, H, N, D] views
        query, key, value = (proj(hidden_states) for proj in (attn.to_q, attn.to_k, attn.to_v))
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (
            x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value)
        )
        # 2. per-head QK LayerNorm
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        # 3. RoPE on the video tokens only (out of place, so autograd sees plain ops)
        if image_rotary_emb is not None:
            query = _rotate_video(query, text_len, image_rotary_emb)
            if not attn.is_cross_attention:
                key = _rotate_video(key, text_len, image_rotary_emb)
        # 4. attention, output projection, split back into (video, text)
        out = layer_attention(query, key, value, layout, backend=self.backend)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        text_out, video_out = out.split([text_len, seq_len - text_len], dim=1)
        return video_out, text_out


def _rotate_video(x: torch.Tensor, text_len: int, rotary: Any) -> torch.Tensor:
    from diffusers.models.embeddings import apply_rotary_emb

    # diffusers annotates a tuple return, but with the default use_real_unbind_dim it returns one tensor
    rotated = cast(torch.Tensor, apply_rotary_emb(x[:, :, text_len:], rotary))
    return torch.cat([x[:, :, :text_len], rotated], dim=2)
