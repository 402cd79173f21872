"""Checks on decoded layers, before anything is resized or trained on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layerflow.layout import Role

from .errors import SampleError

LABEL_MASK_MAX_STEPS = 16
"""An alpha whose largest value is at most this many 8-bit steps is taken for an object-id mask."""


@dataclass
class RawLayer:
    """One decoded layer at its stored size: ``color`` ``[T, H, W, 3]``, ``alpha`` ``[T, H, W, 1]``
    (transparent layers) or ``None``, float32 in [0, 1], straight alpha."""

    role: Role
    color: np.ndarray
    alpha: np.ndarray | None = None


@dataclass
class RawLayers:
    """A clip's decoded layers in depth order (front to back), without the composite.

    ``composite`` may be ``None``: it is then computed exactly, each foreground "over" the layers
    behind it. :meth:`single` builds the one-foreground layers of the official layout.
    """

    layers: dict[str, RawLayer]
    composite: np.ndarray | None = None
    composite_name: str = "composite"

    @classmethod
    def single(
        cls,
        foreground: np.ndarray,
        alpha: np.ndarray,
        background: np.ndarray,
        composite: np.ndarray | None = None,
    ) -> RawLayers:
        layers = {
            "foreground": RawLayer("foreground", foreground, alpha),
            "background": RawLayer("background", background),
        }
        return cls(layers, composite)

    def items(self) -> list[tuple[str, np.ndarray]]:
        """Every array with the name errors give it: the layer's name, ``<name> alpha`` for its matte."""
        arrays = []
        for name, layer in self.layers.items():
            arrays.append((name, layer.color))
            if layer.alpha is not None:
                arrays.append((f"{name} alpha", layer.alpha))
        return arrays + ([(self.composite_name, self.composite)] if self.composite is not None else [])


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


def check_matte(sample_id: str, alpha: np.ndarray, name: str = "alpha") -> None:
    """The alpha is a real matte: not empty, not an object-id mask."""
    alpha_max = float(alpha.max())
    if alpha_max == 0.0:
        raise SampleError(sample_id, f"{name} is 0 in every sampled frame (empty foreground)")
    if alpha_max * 255.0 <= LABEL_MASK_MAX_STEPS + 0.5:
        raise SampleError(
            sample_id,
            f"{name} never exceeds {alpha_max * 255:.0f}/255: this looks like an object-id mask, not a matte "
            "(convert it to 0/255 or a soft matte)",
        )


def check_raw_layers(sample_id: str, layers: RawLayers) -> None:
    """Shapes agree across layers, values are finite and in [0, 1], and every alpha is a real matte."""
    arrays = layers.items()
    first, shape = arrays[0][0], arrays[0][1].shape[:3]
    for name, array in arrays:
        if array.shape[:3] != shape:
            raise SampleError(
                sample_id,
                f"{name} has {array.shape[0]} frames of {array.shape[1]}x{array.shape[2]}, the {first} "
                f"{shape[0]} frames of {shape[1]}x{shape[2]}",
            )
        check_values(sample_id, name, array)
    for name, layer in layers.layers.items():
        if layer.alpha is not None:
            check_matte(sample_id, layer.alpha, f"{name} alpha")
