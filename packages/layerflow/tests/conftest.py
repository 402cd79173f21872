"""Fixtures shared by layerflow's tests."""

from __future__ import annotations

import functools

import pytest
from diffusers.models.autoencoders import autoencoder_kl_cogvideox


@pytest.fixture()
def deterministic_vae(monkeypatch):
    """The VAE posterior's std is zero, so a draw is its mean whatever the noise order (both sides)."""
    gaussian = autoencoder_kl_cogvideox.DiagonalGaussianDistribution
    monkeypatch.setattr(
        autoencoder_kl_cogvideox,
        "DiagonalGaussianDistribution",
        functools.partial(gaussian, deterministic=True),
    )
