"""Test helpers: random and LayerFlow-shaped layouts, seeded q/k/v (used by the tests and the benchmark).

The LayerFlow-shaped layouts here are test and benchmark shapes only: the ``layerflow`` package
builds the layouts it runs from its ``TaskLayout`` (prompt and clip token counts from the model).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from layer_attention import SegmentLayout


def random_layout(generator: torch.Generator, max_segments: int = 6, max_len: int = 60) -> SegmentLayout:
    """1-6 ragged segments and a random allowed table (every row keeps at least one True)."""
    count = int(torch.randint(1, max_segments + 1, (1,), generator=generator))
    lengths = torch.randint(1, max_len + 1, (count,), generator=generator).tolist()
    allowed = torch.rand(count, count, generator=generator) < 0.55
    for row in range(count):
        if not allowed[row].any():
            allowed[row, int(torch.randint(0, count, (1,), generator=generator))] = True
    return SegmentLayout(lengths, allowed)


def small_layerflow_layouts(text_tokens: int, tokens_per_clip: int) -> dict[str, SegmentLayout]:
    """The issue's LayerFlow layouts with small token counts."""
    return {
        "3 prompts + 4 clips": layerflow_layout(3, 4, tokens_per_clip, text_tokens=text_tokens),
        "2 prompts + 4 clips": layerflow_layout(2, 4, tokens_per_clip, text_tokens=text_tokens),
        "conditional": conditional_layout(
            3, 4, tokens_per_clip, condition_clips=(1,), text_tokens=text_tokens
        ),
    }


def qkv(
    layout: SegmentLayout,
    batch: int,
    heads: int,
    head_dim: int,
    dtype: torch.dtype,
    seed: int,
    strided: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Leaf q, k, v ``[B, H, N, D]``; ``strided`` gives diffusers-style transposed views of [B, N, H, D]."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, layout.seq_len, heads, head_dim) if strided else (batch, heads, layout.seq_len, head_dim)
    out = []
    for _ in range(3):
        x = torch.randn(shape, generator=generator).to(dtype)
        x = x.transpose(1, 2) if strided else x
        out.append(x.requires_grad_())
    return out[0], out[1], out[2]


#: T5 tokens per CogVideoX prompt.
TEXT_TOKENS = 226


def cogvideox_clip_tokens(
    latent_frames: int, latent_height: int, latent_width: int, patch_size: int = 2
) -> int:
    """Video tokens of one clip: latent frames x (H / p) x (W / p). CogVideoX-2B, 4 latent frames: 5400."""
    for name, value in (
        ("latent_frames", latent_frames),
        ("latent_height", latent_height),
        ("latent_width", latent_width),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if latent_height % patch_size or latent_width % patch_size:
        raise ValueError(
            f"latent size {latent_height}x{latent_width} is not divisible by patch_size {patch_size}"
        )
    return latent_frames * (latent_height // patch_size) * (latent_width // patch_size)


def layerflow_layout(
    num_prompts: int, num_clips: int, tokens_per_clip: int, text_tokens: int = TEXT_TOKENS
) -> SegmentLayout:
    """Full joint attention over ``num_prompts`` prompts then ``num_clips`` clips (one segment each)."""
    _check_counts(num_prompts, num_clips)
    return SegmentLayout([text_tokens] * num_prompts + [tokens_per_clip] * num_clips)


def conditional_layout(
    num_prompts: int,
    num_clips: int,
    tokens_per_clip: int,
    condition_clips: Sequence[int] = (0,),
    text_tokens: int = TEXT_TOKENS,
) -> SegmentLayout:
    """Layout where clean condition clips attend only to themselves and the text.

    Used by the conditional LayerFlow tasks (generate a background for a given foreground, ...):
    the condition clip must not read the noisy clips, while text and noisy clips read everything.
    ``condition_clips`` are clip indices (0-based among the clips).
    """
    _check_counts(num_prompts, num_clips)
    bad = [c for c in condition_clips if not 0 <= c < num_clips]
    if bad:
        raise ValueError(f"condition_clips {bad} are out of range for {num_clips} clips")
    count = num_prompts + num_clips
    allowed = torch.ones(count, count, dtype=torch.bool)
    for clip in condition_clips:
        row = num_prompts + clip
        allowed[row, num_prompts:] = False
        allowed[row, row] = True
    return SegmentLayout([text_tokens] * num_prompts + [tokens_per_clip] * num_clips, allowed)


def _check_counts(num_prompts: int, num_clips: int) -> None:
    if num_prompts < 0 or num_clips < 1 or num_prompts + num_clips < 1:
        raise ValueError(f"need num_prompts >= 0 and num_clips >= 1, got {num_prompts} and {num_clips}")
