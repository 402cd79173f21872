"""Learnable layer-index embeddings added to the text tokens of each layer prompt.

LayerFlow concatenates one prompt per layer into a single text sequence; a per-layer vector added
to every token of prompt ``i`` tells the transformer which layer a prompt describes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

EmbedderKind = Literal["table", "linear"]

#: Where the official LayerFlow (SAT) checkpoints keep the layer embedder.
OFFICIAL_PREFIX = "model.diffusion_model.mixins.pos_embed.txt_embedder."


class LayerEmbedder(nn.Module):
    """Maps layer indices to vectors of the text-embedding width.

    Args:
        num_layers: how many layer indices are valid (``0 .. num_layers - 1``).
        dim: output width; the width of the text tokens the vectors are added to.
        kind: ``"table"``: one free vector per layer (``nn.Embedding``). ``"linear"``: the official
            LayerFlow form ``LayerNorm(Linear(1 -> dim)(float(index)))``, whose parameters are named
            ``embed.0.*`` / ``embed.1.*`` so official weights load by name (see
            :meth:`load_official_state_dict`).
        zero_init: start with an all-zero output so that adding the embedding leaves a pretrained
            model unchanged at step 0 (table: zero vectors; linear: zero LayerNorm affine).
    """

    def __init__(self, num_layers: int, dim: int, kind: EmbedderKind = "table", zero_init: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if kind not in ("table", "linear"):
            raise ValueError(f"kind must be 'table' or 'linear', got {kind!r}")
        self.num_layers = num_layers
        self.dim = dim
        self.kind: EmbedderKind = kind
        self.embed: nn.Module
        if kind == "table":
            table = nn.Embedding(num_layers, dim)
            nn.init.normal_(table.weight, std=0.02)
            if zero_init:
                nn.init.zeros_(table.weight)
            self.embed = table
        else:
            norm = nn.LayerNorm(dim)
            if zero_init:
                nn.init.zeros_(norm.weight)
                nn.init.zeros_(norm.bias)
            self.embed = nn.Sequential(nn.Linear(1, dim), norm)

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, dim={self.dim}, kind={self.kind!r}"

    def _check_ids(self, layer_ids: torch.Tensor) -> None:
        if layer_ids.dtype.is_floating_point or layer_ids.dtype == torch.bool:
            raise TypeError(f"layer ids must be an integer tensor, got dtype {layer_ids.dtype}")
        if layer_ids.numel() == 0:
            return
        low, high = int(layer_ids.min()), int(layer_ids.max())
        if low < 0 or high >= self.num_layers:
            bad = low if low < 0 else high
            raise ValueError(f"layer id {bad} is out of range for {self.num_layers} layers")

    def forward(self, layer_ids: torch.Tensor) -> torch.Tensor:
        """``layer_ids`` of any shape ``S`` (integers) -> embeddings of shape ``S + (dim,)``."""
        self._check_ids(layer_ids)
        if self.kind == "table":
            return self.embed(layer_ids)
        # Evaluate the (cheap) linear form once per distinct layer, then gather: identical result,
        # no per-token LayerNorm.
        table = self.layer_table(device=layer_ids.device)
        return table[layer_ids]

    def layer_table(self, device: torch.device | None = None) -> torch.Tensor:
        """All ``num_layers`` vectors as a ``[num_layers, dim]`` tensor."""
        param = next(self.parameters())
        device = param.device if device is None else device
        if isinstance(self.embed, nn.Embedding):
            return self.embed.weight.to(device)
        index = torch.arange(self.num_layers, device=device, dtype=param.dtype).unsqueeze(-1)
        return self.embed(index)

    def token_embeddings(
        self, tokens_per_layer: int, layers: int | None = None, device: torch.device | None = None
    ) -> torch.Tensor:
        """``[layers * tokens_per_layer, dim]``: each layer's vector repeated over its prompt tokens.

        ``device``: where to compute them (default: the weights'); name it when the weights may be
        offloaded to the meta device (sequential CPU offload), whose hooks then bring them there.
        """
        layers = self.num_layers if layers is None else layers
        if not 1 <= layers <= self.num_layers:
            raise ValueError(f"layers must be in 1..{self.num_layers}, got {layers}")
        return self.layer_table(device)[:layers].repeat_interleave(tokens_per_layer, dim=0)

    def load_official_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], prefix: str = OFFICIAL_PREFIX
    ) -> None:
        """Load the official LayerFlow ``txt_embedder`` weights (``<prefix>0.weight`` ... ``<prefix>1.bias``).

        Only the ``"linear"`` kind has the official form. Missing keys or wrong shapes raise a
        ``KeyError``/``ValueError`` naming them, and nothing is loaded in that case.
        """
        if self.kind != "linear":
            raise ValueError("official LayerFlow layer-embedder weights need kind='linear'")
        own = self.embed.state_dict()
        missing = [prefix + key for key in own if prefix + key not in state_dict]
        if missing:
            raise KeyError(f"official layer-embedder keys missing from the checkpoint: {missing}")
        wrong = [
            f"{prefix + key}: expected {tuple(own[key].shape)}, got {tuple(state_dict[prefix + key].shape)}"
            for key in own
            if tuple(state_dict[prefix + key].shape) != tuple(own[key].shape)
        ]
        if wrong:
            raise ValueError("official layer-embedder weights have the wrong shape: " + "; ".join(wrong))
        self.embed.load_state_dict({key: state_dict[prefix + key] for key in own})


def layer_token_ids(
    num_layers: int, tokens_per_layer: int, device: torch.device | None = None
) -> torch.Tensor:
    """``[num_layers * tokens_per_layer]`` ids: ``0`` for the first prompt's tokens, ``1`` for the next..."""
    if num_layers < 1 or tokens_per_layer < 1:
        raise ValueError(
            f"need num_layers >= 1 and tokens_per_layer >= 1, got {num_layers}, {tokens_per_layer}"
        )
    return torch.arange(num_layers, device=device).repeat_interleave(tokens_per_layer)
