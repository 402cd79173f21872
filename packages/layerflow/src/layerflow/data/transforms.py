"""Preprocessing: the settings object, resize + center-crop, and the premultiplied foreground resize."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .sampling import FrameSampler

Resample = Literal["bicubic", "bilinear", "nearest-exact"]


@dataclass(frozen=True)
class Preprocess:
    """Everything that turns stored frames into training pixels; part of the precompute fingerprint.

    Args:
        height, width: output size; clips are resized so they cover it, then center-cropped
            (the official ``resize_for_rectangle_crop(..., reshape_mode="center")``).
        frames: which frames are sampled (count, stride or fps, start).
        resample: interpolation for colour layers (bicubic, as the official code); alpha uses the same.
    """

    height: int = 480
    width: int = 720
    frames: FrameSampler = field(default_factory=FrameSampler)
    resample: Resample = "bicubic"

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"height and width must be >= 1, got {self.height}x{self.width}")
        if self.resample not in ("bicubic", "bilinear", "nearest-exact"):
            raise ValueError(f"resample must be bicubic, bilinear or nearest-exact, got {self.resample!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resize(frames: torch.Tensor, size: tuple[int, int], resample: Resample) -> torch.Tensor:
    """``[T, C, H, W]`` to ``size`` (antialiased when shrinking, as torchvision's resize)."""
    if tuple(frames.shape[-2:]) == size:
        return frames
    return F.interpolate(frames, size=size, mode=resample, antialias=resample != "nearest-exact")


def resize_center_crop(frames: torch.Tensor, height: int, width: int, resample: Resample) -> torch.Tensor:
    """Resize ``[T, C, H, W]`` so it covers ``height x width`` (aspect kept), then crop the center."""
    source_h, source_w = frames.shape[-2:]
    scale = max(height / source_h, width / source_w)
    frames = resize(
        frames, (max(height, round(source_h * scale)), max(width, round(source_w * scale))), resample
    )
    top = (frames.shape[-2] - height) // 2
    left = (frames.shape[-1] - width) // 2
    return frames[..., top : top + height, left : left + width]


def unpremultiply(premultiplied: torch.Tensor, alpha: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Straight colour from premultiplied colour; fully transparent pixels get colour 0."""
    return torch.where(alpha > eps, premultiplied / alpha.clamp_min(eps), torch.zeros_like(premultiplied))


def resize_foreground(
    foreground: torch.Tensor,
    alpha: torch.Tensor,
    height: int,
    width: int,
    resample: Resample,
    *,
    crop: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize (+ center-crop unless ``crop=False``) a straight-alpha foreground in premultiplied space.

    Interpolating straight colour would blend in the (meaningless) colour of transparent pixels and
    leave fringes at the edge; the official code resizes the clip after premultiplying it, which is
    this same operation. Returns straight colour and alpha, both clamped to [0, 1].
    """

    def fit(frames: torch.Tensor) -> torch.Tensor:
        if crop:
            return resize_center_crop(frames, height, width, resample)
        return resize(frames, (height, width), resample)

    alpha_resized = fit(alpha).clamp(0.0, 1.0)
    premultiplied = torch.minimum(fit(foreground * alpha).clamp_min(0.0), alpha_resized)
    return unpremultiply(premultiplied, alpha_resized).clamp(0.0, 1.0), alpha_resized


def resize_opaque(frames: torch.Tensor, height: int, width: int, resample: Resample) -> torch.Tensor:
    """Resize + crop an opaque layer, clamped back to [0, 1] (bicubic overshoots)."""
    return resize_center_crop(frames, height, width, resample).clamp(0.0, 1.0)
