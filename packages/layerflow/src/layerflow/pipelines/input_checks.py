"""Value checks on a pipeline call's inputs, before any model runs.

One NaN pixel in a condition spreads through the VAE and joint attention into every output, and
0-255 frames or an out-of-range alpha are read as colours far outside what the model was trained
on; neither fails by itself, so both are refused here, naming the layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch


def _describe_range(values: torch.Tensor) -> str:
    return f"[{values.min().item():g}, {values.max().item():g}]"


def check_condition_values(name: str, frames: torch.Tensor) -> None:
    """Float frames ``[..., C, H, W]``, finite, colour and (C = 4) alpha in [0, 1]."""
    if not frames.is_floating_point():
        raise ValueError(
            f"condition {name!r} is {str(frames.dtype).removeprefix('torch.')}: pass float frames in [0, 1] "
            "(divide 0-255 frames by 255)"
        )
    bad = (~torch.isfinite(frames)).sum().item()
    if bad:
        raise ValueError(f"condition {name!r} has {bad} NaN/inf value(s); frames must be finite, in [0, 1]")
    colour = frames[..., :3, :, :]
    if colour.numel() and (colour.min() < 0 or colour.max() > 1):
        hint = " (0-255 frames: divide by 255)" if colour.max() > 1.5 else ""
        raise ValueError(
            f"condition {name!r} has colour values in {_describe_range(colour)}, expected [0, 1]{hint}"
        )
    if frames.shape[-3] == 4:
        alpha = frames[..., 3, :, :]
        if alpha.min() < 0 or alpha.max() > 1:
            raise ValueError(
                f"condition {name!r} has alpha values in {_describe_range(alpha)}, expected [0, 1]"
            )


def check_input_values(
    conditions: Mapping[str, Any] | None,
    guidance_scale: float,
    num_frames: int | None,
    height: int | None,
    width: int | None,
) -> None:
    """Everything a call gets by value: the condition frames, the guidance scale, explicit sizes.

    Shapes and layer names are checked by the pipeline; tensors of an unexpected rank are left to it.
    """
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale}")
    for label, value in (("num_frames", num_frames), ("height", height), ("width", width)):
        if value is not None and value < 1:
            raise ValueError(f"{label} must be >= 1, got {value}")
    for name, frames in (conditions or {}).items():
        if isinstance(frames, torch.Tensor) and frames.dim() >= 3:
            check_condition_values(name, frames)
