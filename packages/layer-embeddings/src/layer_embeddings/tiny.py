"""Tiny, download-free text models for examples, embedded demos and tests.

Builds a word-level tokenizer with the ``tokenizers`` library and a randomly initialised
``T5EncoderModel`` from a config, so nothing is ever fetched from a model hub. Needs the
``transformers`` extra.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def build_word_tokenizer(words: Iterable[str], *, model_max_length: int = 226) -> Any:
    """A ``PreTrainedTokenizerFast`` over ``words`` (lower-cased, split on spaces and punctuation).

    Token ids: ``<pad>`` = 0, ``</s>`` = 1 (appended to every text, as T5 does), ``<unk>`` = 2, then
    the words in sorted order. Layer prefixes such as ``"0,"`` tokenize as a digit and a comma.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocabulary = list(SPECIAL_TOKENS)
    extra = {w.lower() for word in words for w in re.findall(r"\w+|[^\w\s]", word)}
    extra |= {str(d) for d in range(10)} | {",", "."}
    vocabulary += sorted(extra - set(SPECIAL_TOKENS))
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)]
    )
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def build_tiny_t5_encoder(vocab_size: int, *, d_model: int = 32, num_layers: int = 2, seed: int = 0) -> Any:
    """A small random ``T5EncoderModel`` (eval mode) of width ``d_model``."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=max(d_model // 4, 4),
        d_ff=d_model * 2,
        num_layers=num_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = T5EncoderModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()
