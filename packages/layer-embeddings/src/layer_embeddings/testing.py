"""Test helpers: the tiny text models live in :mod:`layer_embeddings.tiny` (production code imports them there)."""

from .tiny import SPECIAL_TOKENS, build_tiny_t5_encoder, build_word_tokenizer

__all__ = ["SPECIAL_TOKENS", "build_tiny_t5_encoder", "build_word_tokenizer"]
