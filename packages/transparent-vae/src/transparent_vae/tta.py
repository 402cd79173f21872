"""Test-time augmentation over the 8 symmetries of the square (flips x 90-degree rotations), median-merged."""

from __future__ import annotations

from collections.abc import Callable

import torch

#: (horizontal flip, number of 90-degree rotations) for the 8 dihedral transforms, identity first.
DIHEDRAL_TRANSFORMS: tuple[tuple[bool, int], ...] = tuple(
    (flip, k) for flip in (False, True) for k in range(4)
)


def apply_transform(x: torch.Tensor, flip: bool, rotations: int) -> torch.Tensor:
    """Flip (last axis) then rotate by ``rotations * 90`` degrees in the last two axes."""
    if flip:
        x = torch.flip(x, dims=(-1,))
    # rot90 returns a strided view; convolutions on it take a much slower path, so make it contiguous.
    return torch.rot90(x, rotations, dims=(-2, -1)).contiguous() if rotations else x


def invert_transform(x: torch.Tensor, flip: bool, rotations: int) -> torch.Tensor:
    """Undo :func:`apply_transform`."""
    if rotations:
        x = torch.rot90(x, -rotations, dims=(-2, -1)).contiguous()
    return torch.flip(x, dims=(-1,)) if flip else x


def dihedral_median(
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], pixels: torch.Tensor, latent: torch.Tensor
) -> torch.Tensor:
    """Run ``predict(pixels, latent)`` on all 8 transformed copies, undo each transform, take the median.

    As in LayerDiffuse, the per-element median (torch returns the lower middle value of the 8) rejects
    the outlier predictions that a single orientation sometimes makes at alpha edges.
    """
    outputs = [
        invert_transform(predict(apply_transform(pixels, flip, k), apply_transform(latent, flip, k)), flip, k)
        for flip, k in DIHEDRAL_TRANSFORMS
    ]
    return torch.stack(outputs).median(dim=0).values
