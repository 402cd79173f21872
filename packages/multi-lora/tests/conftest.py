from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyAttention(nn.Module):
    """The projection names of diffusers' ``Attention`` (``to_q/to_k/to_v/to_out.0``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return self.to_out[0](weights @ v)


class TinyBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.attn1 = TinyAttention(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(x)
        return x + self.ff(x)


class TinyTransformer(nn.Module):
    def __init__(self, dim: int = 16, num_layers: int = 4):
        super().__init__()
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList([TinyBlock(dim) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x)
        return x


@pytest.fixture
def tiny_model() -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer()


def randomize_lora(model: nn.Module, seed: int = 1) -> None:
    """Give every LoRA B a non-zero value so adapters change outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


@pytest.fixture
def randomize():
    return randomize_lora
