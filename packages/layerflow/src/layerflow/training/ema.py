"""Exponential moving average of the trained parameters (optional; the final export uses it)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


class ParameterEMA:
    """``shadow = d * shadow + (1 - d) * param`` with diffusers' warm-up ``d = min(decay, (1 + n) / (10 + n))``.

    The shadow copies are float32 whatever the parameters' dtype, keyed by parameter name so they
    are saved as safetensors and matched by name on resume.
    """

    def __init__(self, parameters: Mapping[str, torch.Tensor], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in parameters.items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, parameters: Mapping[str, torch.Tensor]) -> None:
        decay = self.current_decay()
        for name, param in parameters.items():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, parameters: Mapping[str, torch.nn.Parameter]) -> None:
        for name, param in parameters.items():
            param.copy_(self.shadow[name].to(param.dtype))

    def load(self, shadow: Mapping[str, torch.Tensor], num_updates: int) -> None:
        missing = sorted(set(self.shadow) - set(shadow))
        if missing:
            raise ValueError(f"EMA state lacks parameters {missing[:5]}")
        for name, tensor in self.shadow.items():
            tensor.copy_(shadow[name])
        self.num_updates = num_updates
