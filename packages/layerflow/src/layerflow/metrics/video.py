"""Reference-free checks of a layered video: recomposition, cross-layer agreement and temporal flicker (0-1 scale)."""

from __future__ import annotations

import torch
from torch import Tensor

from layerflow.compositing import alpha_over

from .matting import alpha_iou


def _check_video(name: str, x: Tensor, channels: int | None = None) -> None:
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        expected = f"[T, {channels}, H, W]" if channels else "[T, C, H, W]"
        raise ValueError(f"{name}: expected a video of shape {expected}, got {tuple(x.shape)}")


def recomposition_error(composite: Tensor, foreground: Tensor, alpha: Tensor, background: Tensor) -> float:
    """Mean absolute error between a blended video and the recomposition of its layers.

    ``mean |composite - (alpha * fg + (1 - alpha) * bg)|`` over frames, pixels and RGB channels:
    0 when the layers explain the blend exactly.
    """
    _check_video("composite", composite, 3)
    _check_video("foreground", foreground, 3)
    _check_video("alpha", alpha, 1)
    _check_video("background", background, 3)
    shapes = {tuple(x.shape[-2:]) + (x.shape[0],) for x in (composite, foreground, alpha, background)}
    if len(shapes) != 1:
        raise ValueError(f"layer sizes differ (H, W, T): {sorted(shapes)}")
    expected = alpha_over([torch.cat([foreground, alpha], dim=1), background])
    return float((composite.double() - expected.double()).abs().mean())


#: A composite pixel shows the object where it leaves the background layer by this much (any channel):
#: the synthetic truth scores 0.91 at 0.25 (0.83 at 0.1, where the anti-aliased rim counts against it).
CHANGE_THRESHOLD = 0.25


def cross_layer_iou(
    alpha: Tensor, composite: Tensor, background: Tensor, threshold: float = CHANGE_THRESHOLD
) -> float:
    """Do the layers show one scene? IoU per frame of ``alpha > 0.5`` and of where the composite
    differs from the background layer (``max_c |composite - background| > threshold``), averaged.

    Each layer can look right alone while the object sits elsewhere in each; this is 1 when the
    foreground's matte covers exactly what the composite adds to the background. It needs
    foreground and background colours apart (as in the synthetic world), and reads low on the
    anti-aliased rim of small objects: compare it with the same measure on a reference.
    """
    _check_video("alpha", alpha, 1)
    _check_video("composite", composite, 3)
    _check_video("background", background, 3)
    if not alpha.shape[0] == composite.shape[0] == background.shape[0]:
        raise ValueError(
            f"frame counts differ: {alpha.shape[0]}, {composite.shape[0]}, {background.shape[0]}"
        )
    changed = (composite.double() - background.double()).abs().amax(dim=1, keepdim=True) > threshold
    return alpha_iou(alpha, changed.to(alpha.dtype))


def temporal_flicker(video: Tensor) -> float:
    """Mean absolute difference between consecutive frames (as in VBench's temporal flickering).

    ``mean_{t>=1} mean |x_t - x_{t-1}|`` on the 0-1 scale; 0 for a still video. It measures all
    frame-to-frame change, so compare it with the same measure on a reference clip, or read it
    on layers that should be still.
    """
    _check_video("video", video)
    if video.shape[0] < 2:
        raise ValueError(f"temporal flicker needs at least 2 frames, got {video.shape[0]}")
    frames = video.double()
    return float((frames[1:] - frames[:-1]).abs().mean())


def mean_absolute_error(pred: Tensor, target: Tensor) -> float:
    """``mean |pred - target|`` for two videos of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return float((pred.double() - target.double()).abs().mean())
