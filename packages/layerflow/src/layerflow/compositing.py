"""The "over" rule of straight-alpha compositing, written once: ``alpha * front + (1 - alpha) * back``.

Every composite LayerFlow makes goes through here: synthetic clips, dataset samples, reference
clips for the metrics, recomposition and edits, the demo's previews. :func:`over` computes in its
inputs' dtype (what the data and the synthetic world store); :func:`alpha_over` stacks layers in
float64 (what recomposition writes).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def over(front: Tensor, alpha: Tensor, back: Tensor | float) -> Tensor:
    """Straight-alpha colour ``front`` with ``alpha`` over ``back`` (broadcast; a number is a flat colour),
    in the inputs' dtype."""
    return alpha * front + (1 - alpha) * back


def alpha_over(layers: Sequence[Tensor]) -> Tensor:
    """Layers front to back, ``[T, C, H, W]`` in [0, 1] -> their composite ``[T, 3, H, W]``.

    Every layer but the last is straight RGBA; the last (backmost) is opaque RGB. Each layer goes
    over what lies behind it (:func:`over`), computed in float64 and returned in the backmost
    layer's dtype.
    """
    if not layers:
        raise ValueError("nothing to composite: no layers")
    *fronts, back = layers
    if back.dim() != 4 or back.shape[1] != 3:
        raise ValueError(f"the backmost layer must be opaque RGB [T, 3, H, W], got {tuple(back.shape)}")
    out = back.double()
    for layer in reversed(fronts):
        if layer.shape[1] != 4:
            raise ValueError(f"layers in front must be RGBA [T, 4, H, W], got {tuple(layer.shape)}")
        if layer.shape[0] != back.shape[0] or layer.shape[-2:] != back.shape[-2:]:
            raise ValueError(f"layer sizes differ: {tuple(layer.shape)} over {tuple(back.shape)}")
        out = over(layer[:, :3].double(), layer[:, 3:].double(), out)
    return out.to(back.dtype)
