"""Per-GPU memory of a stage's model states under each engine: computed, so a config can be chosen
before a cluster is booked.

Model states are what the trainer keeps per parameter, in float32 whatever ``mixed_precision`` (the
transformer's master weights stay float32 and compute runs under autocast):

=========================  ================================  ==================  ==================
engine                     weights (all P parameters)        gradients + AdamW   EMA shadows
                                                             (T trained: 4+8 B)  (T: 4 B)
=========================  ================================  ==================  ==================
ddp                        4P                                12T                 4T
fsdp2-shard-grad-op        4P (gathered forward->backward)   12T / N             4T / N
fsdp2-full-shard           4P / N + 2 gathered blocks        12T / N             4T / N
fsdp2-full-shard-offload   2 gathered blocks (rest on CPU)   0 (CPU)             0 (CPU)
deepspeed-zero2            4P                                16T / N             4T
deepspeed-zero3            4P / N + 2 gathered blocks        16T / N             4T
deepspeed-zero3-offload    2 gathered blocks (rest on CPU)   0 (CPU)             0 (CPU)
=========================  ================================  ==================  ==================

``N`` GPUs; "2 gathered blocks": FSDP2 un-shards one block to compute it while it prefetches the next
(ZeRO-3 likewise). DeepSpeed's ZeRO optimizer keeps its own float32 copy of each trained partition
next to the parameters (16 B per trained parameter, not 12), and the trainer's EMA follows the
gathered full values there, so it is not sharded.
Activations (with gradient checkpointing: the block inputs, plus one block's internals in backward),
the frozen VAE/T5 (moved to the CPU after the precompute) and the CUDA workspace come on top.
``python -m layerflow.training.memory CONFIG --stage N --gpus 8`` prints the table for a config.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

import multi_lora

from .config import TrainConfig, load_config
from .stages import BLOCKS, MOTION, StagePlan, adapter_config, apply_stage, count_parameters

#: Every engine, from the most memory per GPU to the least (for the 2B stage configs on 8 GPUs).
ENGINES = (
    "ddp",
    "deepspeed-zero2",
    "fsdp2-shard-grad-op",
    "deepspeed-zero3",
    "fsdp2-full-shard",
    "deepspeed-zero3-offload",
    "fsdp2-full-shard-offload",
)
FLOAT32 = 4
ADAM = 2 * FLOAT32  # two moments per trained parameter
ZERO_MASTER = FLOAT32  # DeepSpeed's float32 copy of the trained partition
GATHERED_BLOCKS = 2
GIB = 2**30


@dataclass(frozen=True)
class ParameterCounts:
    """What a stage holds: all parameters, the trained ones, and the largest block (FSDP's unit)."""

    total: int
    trained: int
    block: int

    @classmethod
    def of_stage(cls, config: TrainConfig, transformer: nn.Module | None = None) -> ParameterCounts:
        """Counts of ``config``'s stage on ``transformer`` (default: the CogVideoX-2B architecture, the
        model class's defaults, built on the meta device: no memory, no weights read)."""
        if transformer is None:
            from layerflow.models import LayerFlowTransformer3DModel

            with torch.device("meta"):
                transformer = LayerFlowTransformer3DModel()
        plan = StagePlan.from_config(config, transformer)
        if config.stage == 3 and MOTION not in multi_lora.list_adapters(transformer):  # stage 2's, frozen
            multi_lora.add_adapter(transformer, MOTION, adapter_config(config, plan, MOTION, trainable=False))
        trained = apply_stage(transformer, config, plan)
        blocks = getattr(transformer, BLOCKS)
        return cls(
            total=sum(p.numel() for p in transformer.parameters()),
            trained=count_parameters(trained),
            block=max(sum(p.numel() for p in block.parameters()) for block in blocks),
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of model states per GPU."""

    weights: int
    gradients_and_optimizer: int
    ema: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients_and_optimizer + self.ema


def memory_per_gpu(counts: ParameterCounts, engine: str, num_gpus: int, *, ema: bool) -> MemoryEstimate:
    """Model-state bytes per GPU of ``engine`` on ``num_gpus`` GPUs (see the module's table)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    gathered = GATHERED_BLOCKS * counts.block * FLOAT32
    trained = counts.trained * (FLOAT32 + ADAM)
    shadows = counts.trained * FLOAT32 if ema else 0
    if engine == "ddp":
        return MemoryEstimate(counts.total * FLOAT32, trained, shadows)
    if engine == "fsdp2-shard-grad-op":
        return MemoryEstimate(counts.total * FLOAT32, trained // num_gpus, shadows // num_gpus)
    if engine == "fsdp2-full-shard":
        return MemoryEstimate(
            counts.total * FLOAT32 // num_gpus + gathered, trained // num_gpus, shadows // num_gpus
        )
    zero_states = counts.trained * (FLOAT32 + ZERO_MASTER + ADAM) // num_gpus
    if engine == "deepspeed-zero2":
        return MemoryEstimate(counts.total * FLOAT32, zero_states, shadows)
    if engine == "deepspeed-zero3":
        return MemoryEstimate(counts.total * FLOAT32 // num_gpus + gathered, zero_states, shadows)
    return MemoryEstimate(gathered, 0, 0)  # the offload engines


def memory_table(counts: ParameterCounts, num_gpus: int, *, ema: bool) -> str:
    """A markdown table of :func:`memory_per_gpu` for every engine, in GiB."""
    rows = [
        f"| engine | weights | grads + AdamW | EMA | model states per GPU ({num_gpus} GPUs) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for engine in ENGINES:
        m = memory_per_gpu(counts, engine, num_gpus, ema=ema)
        parts = (m.weights, m.gradients_and_optimizer, m.ema, m.total)
        rows.append(f"| {engine} | " + " | ".join(f"{value / GIB:.2f} GiB" for value in parts) + " |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m layerflow.training.memory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("config", help="a stage config (TOML/YAML)")
    parser.add_argument("--stage", type=int, required=True, choices=(1, 2, 3))
    parser.add_argument("--gpus", type=int, default=8, help="GPUs in the run (all machines)")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.stage)
    counts = ParameterCounts.of_stage(config)
    print(
        f"stage {args.stage}: {counts.total:,} parameters, {counts.trained:,} trained, block {counts.block:,}"
    )
    print(memory_table(counts, args.gpus, ema=config.run.ema_decay is not None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
