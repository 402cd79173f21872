"""The per-GPU memory of the 2B stage configs, against values computed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerflow.training.config import load_config
from layerflow.training.memory import ENGINES, MemoryEstimate, ParameterCounts, memory_per_gpu

CONFIGS = Path(__file__).parents[1] / "src" / "layerflow" / "training" / "configs"
#: CogVideoX-2B's transformer with the layer embedder: 30 blocks of 56,081,536 parameters.
TOTAL, BLOCK, EMBEDDER = 1_693_791_552, 56_081_536, 7_680


def test_stage1_counts_are_the_five_chosen_blocks_and_the_layer_embedder() -> None:
    counts = ParameterCounts.of_stage(load_config(CONFIGS / "cogvideox-2b-480x720-stage1.toml", 1))
    assert counts == ParameterCounts(total=TOTAL, trained=5 * BLOCK + EMBEDDER, block=BLOCK)


def test_stage1_memory_per_gpu_by_hand() -> None:
    counts = ParameterCounts(total=TOTAL, trained=5 * BLOCK + EMBEDDER, block=BLOCK)
    # DDP: float32 weights 4 x 1,693,791,552; gradients + 2 Adam moments 12 x 280,415,360.
    assert memory_per_gpu(counts, "ddp", 8, ema=False).total == 6_775_166_208 + 3_364_984_320
    # FSDP2 full shard on 8: weights / 8 + two gathered blocks (4 x 2 x 56,081,536) + states / 8.
    full = memory_per_gpu(counts, "fsdp2-full-shard", 8, ema=True)
    assert full == MemoryEstimate(846_895_776 + 448_652_288, 420_623_040, 140_207_680)
    assert full.total == 1_856_378_784  # 1.73 GiB of model states, against 9.44 GiB under DDP
    # ZeRO-2 on 8: all weights; gradients + DeepSpeed's float32 copy + 2 moments 16 x 280,415,360 / 8;
    # the EMA (4 x 280,415,360) whole on every GPU.
    zero2 = memory_per_gpu(counts, "deepspeed-zero2", 8, ema=True)
    assert zero2 == MemoryEstimate(6_775_166_208, 560_830_720, 1_121_661_440)
    # ZeRO-3 on 8: weights / 8 + two gathered blocks, as FSDP2 full shard; the same states as ZeRO-2.
    zero3 = memory_per_gpu(counts, "deepspeed-zero3", 8, ema=True)
    assert zero3 == MemoryEstimate(846_895_776 + 448_652_288, 560_830_720, 1_121_661_440)
    assert memory_per_gpu(counts, "deepspeed-zero3-offload", 8, ema=True) == MemoryEstimate(448_652_288, 0, 0)
    totals = [memory_per_gpu(counts, engine, 8, ema=True).total for engine in ENGINES]
    assert totals == sorted(totals, reverse=True)  # each engine in the list needs at most the one before


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="engine must be one of"):
        memory_per_gpu(ParameterCounts(10, 1, 1), "zero3", 8, ema=False)


def test_the_shipped_accelerate_configs_are_the_engines_computed_here() -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    files = {path.stem: path for path in (CONFIGS / "accelerate").glob("*.yaml")}
    assert sorted(files) == sorted(ENGINES)  # one name per engine: file, memory table, README
    for engine, path in files.items():
        config = load_config_from_file(str(path))
        assert config.num_processes == 8 and config.num_machines == 1
        if engine == "ddp":
            assert config.distributed_type == DistributedType.MULTI_GPU
            continue
        if engine.startswith("deepspeed-"):
            deepspeed = config.deepspeed_config
            assert config.distributed_type == DistributedType.DEEPSPEED
            assert f"zero{deepspeed['zero_stage']}" == engine.split("-")[1]
            offload = "cpu" if engine.endswith("-offload") else "none"
            assert deepspeed["offload_optimizer_device"] == deepspeed["offload_param_device"] == offload
            continue
        fsdp = config.fsdp_config
        assert config.distributed_type == DistributedType.FSDP and fsdp["fsdp_version"] == 2
        assert fsdp["fsdp_reshard_after_forward"] == (engine != "fsdp2-shard-grad-op")
        assert fsdp["fsdp_offload_params"] == engine.endswith("-offload")
