"""LayerFlow layouts: text prompts (226 T5 tokens each) followed by layer clips.

CogVideoX-2B joins ``[text ; video]`` in one sequence; LayerFlow concatenates one prompt per layer
and one clip per layer (foreground, alpha, background, blended). These helpers name that structure
so callers never count tokens by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .layout import SegmentLayout

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
