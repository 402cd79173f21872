from __future__ import annotations

import pytest
import torch

from transparent_vae import TinyVAE, TransparentVAE
from transparent_vae.testing import tiny_decoder, tiny_encoder


@pytest.fixture
def tiny_tvae() -> TransparentVAE:
    torch.manual_seed(0)
    return TransparentVAE(TinyVAE(), tiny_encoder(), tiny_decoder())


@pytest.fixture(scope="session")
def tiny_autoencoder_kl():
    pytest.importorskip("diffusers")
    from transparent_vae.testing import build_tiny_autoencoder_kl

    return build_tiny_autoencoder_kl()


@pytest.fixture(scope="session")
def tiny_cogvideox_vae():
    pytest.importorskip("diffusers")
    from transparent_vae.testing import build_tiny_cogvideox_vae

    return build_tiny_cogvideox_vae()


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: on a shared 2-core machine a second intra-op thread only adds contention
    (measured: the training test takes 7 s on one thread and >100 s on two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
