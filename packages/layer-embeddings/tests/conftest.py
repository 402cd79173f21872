from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from layer_embeddings.testing import build_tiny_t5_encoder, build_word_tokenizer

WORDS = ["a red fox running", "blue sky with clouds", "fox in front of the sky", "green", "circle"]


@pytest.fixture(scope="session")
def tokenizer():
    return build_word_tokenizer(WORDS)


@pytest.fixture(scope="session")
def text_encoder(tokenizer):
    return build_tiny_t5_encoder(len(tokenizer), d_model=32)
