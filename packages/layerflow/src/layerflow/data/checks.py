"""Checks on decoded layers, before anything is resized or trained on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SampleError

LABEL_MASK_MAX_STEPS = 16
"""An alpha whose largest value is at most this many 8-bit steps is taken for an object-id mask."""


@dataclass
class RawLayers:
    """Decoded layers at their stored size: float32 ``[T, H, W, C]`` arrays in [0, 1] (straight alpha).

    ``composite`` may be ``None``: it is then computed exactly, ``alpha * fg + (1 - alpha) * bg``.
    """

    foreground: np.ndarray
    alpha: np.ndarray
    background: np.ndarray
    composite: np.ndarray | None = None

    def items(self) -> list[tuple[str, np.ndarray]]:
        layers = [("foreground", self.foreground), ("alpha", self.alpha), ("background", self.background)]
        return layers + ([("composite", self.composite)] if self.composite is not None else [])


def check_lengths(sample_id: str, lengths: dict[str, int]) -> int:
    """All layers must have the same number of frames; returns it."""
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name} {n}" for name, n in lengths.items())
        raise SampleError(sample_id, f"layers differ in length ({described} frames)")
    return next(iter(lengths.values()))


def check_values(sample_id: str, name: str, array: np.ndarray) -> None:
    """Finite values in [0, 1]."""
    if not np.isfinite(array).all():
        raise SampleError(sample_id, f"{name} contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise SampleError(sample_id, f"{name} values span [{low:.4g}, {high:.4g}], expected [0, 1]")


def check_matte(sample_id: str, alpha: np.ndarray) -> None:
    """The alpha is a real matte: not empty, not an object-id mask."""
    alpha_max = float(alpha.max())
    if alpha_max == 0.0:
        raise SampleError(sample_id, "alpha is 0 in every sampled frame (empty foreground)")
    if alpha_max * 255.0 <= LABEL_MASK_MAX_STEPS + 0.5:
        raise SampleError(
            sample_id,
            f"alpha never exceeds {alpha_max * 255:.0f}/255: this looks like an object-id mask, not a matte "
            "(convert it to 0/255 or a soft matte)",
        )


def check_raw_layers(sample_id: str, layers: RawLayers) -> None:
    """Shapes agree across layers, values are finite and in [0, 1], and the alpha is a real matte."""
    shape = layers.foreground.shape[:3]
    for name, array in layers.items():
        if array.shape[:3] != shape:
            raise SampleError(
                sample_id,
                f"{name} has {array.shape[0]} frames of {array.shape[1]}x{array.shape[2]}, the foreground "
                f"{shape[0]} frames of {shape[1]}x{shape[2]}",
            )
        check_values(sample_id, name, array)
    check_matte(sample_id, layers.alpha)
