"""Speed and memory presets: the one inference option of the pipeline, the task runner and the CLI.

Names only (no diffusers import, so the CLI parses without loading models); what each name runs is
:mod:`layerflow.pipelines.acceleration`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Speed = Literal["exact", "fast", "fastest"]
Memory = Literal["default", "offload", "low"]
SPEEDS: tuple[Speed, ...] = get_args(Speed)
MEMORIES: tuple[Memory, ...] = get_args(Memory)


@dataclass(frozen=True)
class Preset:
    """Speed and memory of inference, by name.

    Attributes:
        speed: ``"exact"`` (every block every step), ``"fast"`` / ``"fastest"``: the cache method of
            :data:`~layerflow.pipelines.acceleration.SPEED_METHODS` (an approximation; ``benchmarks/bench_caches.py`` measures it).
        memory: ``"default"`` (everything on the device), ``"offload"`` (model CPU offload: one
            component on the device at a time), ``"low"`` (leaf-level group offload of every model,
            VAE slicing and tiling).
    """

    speed: Speed = "exact"
    memory: Memory = "default"

    def __post_init__(self) -> None:
        if self.speed not in SPEEDS:
            raise ValueError(f"speed must be one of {SPEEDS}, got {self.speed!r}")
        if self.memory not in MEMORIES:
            raise ValueError(f"memory must be one of {MEMORIES}, got {self.memory!r}")

    def to_dict(self) -> dict[str, str]:
        """What an output's settings (and an output folder's manifest) record."""
        return {"speed": self.speed, "memory": self.memory}
