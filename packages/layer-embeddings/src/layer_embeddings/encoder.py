"""Encode one prompt per layer into one text sequence ``[B, L * max_length, D]``.

Works with any T5-style encoder and tokenizer from ``transformers`` (the ``transformers`` extra):
the tokenizer is called as ``tokenizer(texts, padding="max_length", max_length=..., truncation=...,
return_tensors="pt")`` and the encoder as ``text_encoder(input_ids)[0]``, as CogVideoX does (no
attention mask is passed, matching the official LayerFlow and CogVideoX code).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn

from .embedder import LayerEmbedder, layer_token_ids
from .prompts import format_layer_prompt

logger = logging.getLogger(__name__)

UnconditionalMode = Literal["zeros", "empty_string"]
LayerPrompts = Sequence[str | None]


def _encoder_width(text_encoder: nn.Module) -> int | None:
    """The hidden width from a ``transformers`` config, when the encoder has one."""
    config = getattr(text_encoder, "config", None)
    width = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
    return int(width) if width is not None else None


@dataclass
class LayerPromptEmbeddings:
    """What :class:`LayerPromptEncoder` returns.

    Attributes:
        embeddings: ``[B, L * max_length, D]``; layer ``i`` occupies tokens ``i*max_length .. (i+1)*max_length``.
        layer_ids: ``[L * max_length]`` integer layer index of every token.
        attention_mask: ``[B, L * max_length]`` 1 for real tokens, 0 for padding and for zeroed layers.
    """

    embeddings: torch.Tensor
    layer_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def num_layers(self) -> int:
        return int(self.layer_ids.max()) + 1


class LayerPromptEncoder(nn.Module):
    """Batched per-layer prompt encoding with optional layer-index embeddings.

    Args:
        text_encoder: a T5-style encoder returning hidden states first (``T5EncoderModel``).
        tokenizer: the matching tokenizer (any ``transformers`` tokenizer).
        max_length: tokens per layer prompt (226 for CogVideoX/LayerFlow); longer prompts are truncated
            when ``truncation`` is true and rejected otherwise.
        layer_embedder: optional :class:`LayerEmbedder` whose vectors are added to each layer's tokens.
            Its ``dim`` must equal the encoder's hidden width.
        unconditional: how a ``None`` layer prompt is encoded: ``"zeros"`` gives all-zero embeddings
            (official LayerFlow parity), ``"empty_string"`` encodes ``""`` like any prompt.
        add_index_prefix: format every prompt as ``"<i>, <text>"`` (the LayerFlow convention) before
            tokenizing. Turn off when the prompts already carry the prefix.
        truncation: truncate prompts longer than ``max_length`` (with a warning) instead of failing.
    """

    def __init__(
        self,
        text_encoder: nn.Module,
        tokenizer: Any,
        *,
        max_length: int = 226,
        layer_embedder: LayerEmbedder | None = None,
        unconditional: UnconditionalMode = "zeros",
        add_index_prefix: bool = True,
        truncation: bool = True,
    ):
        super().__init__()
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if unconditional not in ("zeros", "empty_string"):
            raise ValueError(f"unconditional must be 'zeros' or 'empty_string', got {unconditional!r}")
        width = _encoder_width(text_encoder)
        if layer_embedder is not None and width is not None and layer_embedder.dim != width:
            raise ValueError(f"layer embedder dim {layer_embedder.dim} != text encoder width {width}")
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.layer_embedder = layer_embedder
        self.unconditional: UnconditionalMode = unconditional
        self.add_index_prefix = add_index_prefix
        self.truncation = truncation

    def _normalize(self, prompts: Sequence[LayerPrompts] | LayerPrompts) -> list[list[str | None]]:
        """Accept one sample (list of layer prompts) or a batch (list of lists); validate all of it."""
        if isinstance(prompts, str) or len(prompts) == 0:
            raise ValueError(f"expected a list of layer prompts (or a batch of such lists), got {prompts!r}")
        batch: list[list[str | None]]
        if all(p is None or isinstance(p, str) for p in prompts):
            batch = [cast(list[str | None], list(prompts))]
        else:
            batch = [list(cast(Sequence[str | None], sample)) for sample in prompts]
        num_layers = len(batch[0])
        for b, sample in enumerate(batch):
            if isinstance(sample, str):
                raise TypeError(f"sample {b}: expected a list of layer prompts, got a single str")
            if len(sample) != num_layers:
                raise ValueError(f"sample {b} has {len(sample)} layer prompts, sample 0 has {num_layers}")
            for layer, text in enumerate(sample):
                if text is not None and not isinstance(text, str):
                    raise TypeError(
                        f"sample {b}, layer {layer}: prompt must be a str or None, got {type(text).__name__}"
                    )
        if self.layer_embedder is not None and num_layers > self.layer_embedder.num_layers:
            raise ValueError(
                f"{num_layers} layer prompts but the layer embedder knows {self.layer_embedder.num_layers} layers"
            )
        return batch

    def _text_for(self, layer: int, text: str | None) -> str:
        text = "" if text is None else text
        return format_layer_prompt(layer, text) if self.add_index_prefix else text

    def _tokenize(self, texts: list[str], where: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        untruncated = self.tokenizer(texts, padding="longest", return_tensors="pt").input_ids
        if untruncated.shape[-1] > self.max_length:
            lengths = (untruncated != self.tokenizer.pad_token_id).sum(-1)
            too_long = [(where[i], int(n)) for i, n in enumerate(lengths.tolist()) if n > self.max_length]
            if too_long:
                described = ", ".join(f"sample {s} layer {layer} ({n} tokens)" for (s, layer), n in too_long)
                if not self.truncation:
                    raise ValueError(f"layer prompts longer than max_length={self.max_length}: {described}")
                logger.warning("truncating layer prompts to %d tokens: %s", self.max_length, described)
        return tokens.input_ids, tokens.attention_mask

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[LayerPrompts] | LayerPrompts) -> LayerPromptEmbeddings:
        """Encode without gradients into the text encoder (the usual frozen-T5 case)."""
        return self(prompts)

    def forward(
        self,
        prompts: Sequence[LayerPrompts] | LayerPrompts,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LayerPromptEmbeddings:
        """Encode ``prompts`` (one list of ``L`` layer prompts, or a batch of them).

        ``None`` entries are unconditional layer prompts. One tokenizer call and one encoder call
        serve every layer of every sample.
        """
        batch = self._normalize(prompts)
        num_samples, num_layers = len(batch), len(batch[0])
        param = next(self.text_encoder.parameters())
        device = param.device if device is None else device
        where = [(b, layer) for b in range(num_samples) for layer in range(num_layers)]
        texts = [self._text_for(layer, batch[b][layer]) for b, layer in where]

        input_ids, token_mask = self._tokenize(texts, where)
        # Weights on the meta device are offloaded (sequential CPU offload): its hooks move the inputs.
        hidden = self.text_encoder(input_ids.to(device if param.is_meta else param.device))[0]
        width = hidden.shape[-1]
        hidden = hidden.to(device=device, dtype=dtype or hidden.dtype)
        token_mask = token_mask.to(device)

        if self.unconditional == "zeros":
            keep = torch.tensor([batch[b][layer] is not None for b, layer in where], device=device)
            hidden = hidden * keep.view(-1, 1, 1).to(hidden.dtype)
            token_mask = token_mask * keep.view(-1, 1).to(token_mask.dtype)

        embeddings = hidden.reshape(num_samples, num_layers * self.max_length, width)
        layer_ids = layer_token_ids(num_layers, self.max_length, device=device)
        if self.layer_embedder is not None:
            if self.layer_embedder.dim != width:
                raise ValueError(
                    f"layer embedder dim {self.layer_embedder.dim} != text encoder width {width}"
                )
            extra = self.layer_embedder.token_embeddings(self.max_length, num_layers, device)
            embeddings = embeddings + extra.to(device=device, dtype=embeddings.dtype)
        return LayerPromptEmbeddings(
            embeddings=embeddings,
            layer_ids=layer_ids,
            attention_mask=token_mask.reshape(num_samples, num_layers * self.max_length),
        )
