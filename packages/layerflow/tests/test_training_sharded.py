"""Sharded (FSDP2) training on CPU with 2 gloo processes, through the trainer's own checkpoint and export
code: accelerate shards only on GPUs, so the model is sharded by torch's ``fully_shard`` on a CPU mesh
(:class:`~layerflow.training.testing.CPUShardedTrainer`). Oracles: the uninterrupted sharded run (a
SIGKILLed + resumed run equals it bit for bit) and a DDP run (the exports agree within float tolerance)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor

from layerflow.training import checkpointing as ckpt
from layerflow.training.testing import (
    CPUShardedTrainer,
    free_port,
    join_cpu_group,
    reset_accelerate_state,
    tiny_test_config,
    train_tiny,
)
from layerflow.training.trainer import LayerFlowTrainer

WORLD = 2
OPTIONS: dict[str, Any] = {
    "run": {"max_steps": 4, "checkpoint_every": 2, "ema_decay": 0.9},
    "optim": {"batch_size": 2},
}


def settings(root: Path, name: str) -> dict[str, Any]:
    return OPTIONS | {
        "run": OPTIONS["run"] | {"output_dir": str(root / name)},
        "data": {"cache_dir": str(root / "cache")},
    }


def sigkill_after(step: int):
    def callback(done: int, loss: float) -> None:
        if done == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return callback


def worker(rank: int, port: int, root: str, phase: str, world: int = WORLD) -> None:
    join_cpu_group(rank, world, port)
    engine, _, deepspeed_phase = phase.partition(":")
    if deepspeed_phase:  # "zero2:full": DeepSpeed, as accelerate launch with deepspeed-zero2.yaml sets it
        deepspeed_worker(Path(root), engine, deepspeed_phase, world)
        return
    if phase == "machines":  # what a 2-machine launch gives: each process is its machine's local rank 0
        os.environ.update(LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", GROUP_RANK=str(rank), NODE_RANK=str(rank))
    path = Path(root)
    # One run per launch: the trainer ends its process group, and a new one on the same port may race.
    trainer_class, name, kwargs = {
        "ddp": (LayerFlowTrainer, "ddp", {}),
        "ddp-resumed": (LayerFlowTrainer, "ddp-resumed", {"resume": True}),
        "full": (CPUShardedTrainer, "full", {}),
        "killed": (CPUShardedTrainer, "killed", {"on_step_end": sigkill_after(3)}),
        "resumed": (CPUShardedTrainer, "killed", {"resume": True}),
        "machines": (CPUShardedTrainer, "machines", {}),
    }[phase]
    reset_accelerate_state()
    trainer = trainer_class(tiny_test_config(path, 1, settings(path, name)), **kwargs)
    trainer.train()
    assert trainer.accelerator.num_processes == WORLD, "the run did not go distributed"
    sharded = [isinstance(p, DTensor) for p in trainer.trained.values()]
    assert all(sharded) if trainer_class is CPUShardedTrainer else not any(sharded)
    assert trainer.accelerator.is_local_main_process == (phase == "machines" or rank == 0)


def deepspeed_worker(root: Path, engine: str, phase: str, world: int) -> None:
    """A DeepSpeed run through accelerate (no ``ACCELERATE_USE_CPU``: it turns DeepSpeed off)."""
    del os.environ["ACCELERATE_USE_CPU"]
    os.environ.update(ACCELERATE_USE_DEEPSPEED="true", **ZERO_ENGINES[engine])
    resume = {"resume": True, "allow_changes": True}  # one process: a micro-batch of 4 (same global batch)
    name, kwargs = {
        "full": (engine, {}),
        "killed": (f"{engine}-killed", {"on_step_end": sigkill_after(3)}),
        "resumed": (f"{engine}-killed", {"resume": True}),
        "fallback": (f"{engine}-fallback", {"resume": True}),
        "one": (f"{engine}-one", resume),
        "from-ddp": (f"{engine}-from-ddp", {"resume": True}),
    }[phase]
    options = settings(root, name) | ({"optim": {"batch_size": 4}} if world == 1 else {})
    reset_accelerate_state()
    trainer = LayerFlowTrainer(tiny_test_config(root, 1, options), **kwargs)
    trainer.train()
    assert trainer.deepspeed and trainer.accelerator.num_processes == world, (
        "DeepSpeed did not run as one group"
    )
    assert trainer.model.zero_optimization_stage() == int(
        ZERO_ENGINES[engine]["ACCELERATE_DEEPSPEED_ZERO_STAGE"]
    )
    offload = trainer.model.zero_offload_optimizer()
    assert (offload is not None and offload.device == "cpu") == engine.endswith("offload")


def launch(root: Path, phase: str, world: int = WORLD) -> None:
    reset_accelerate_state()
    mp.start_processes(worker, args=(free_port(), str(root), phase, world), nprocs=world, start_method="fork")


def copy_until_checkpoint_2(root: Path, source: str, name: str) -> None:
    """``root/name``: run ``source`` as if killed after its checkpoint 2 (what it wrote later removed)."""
    shutil.copytree(root / source, root / name)
    for written_later in ("final", "checkpoints/checkpoint-4"):
        shutil.rmtree(root / name / written_later)


def final(root: Path, name: str) -> tuple[dict[str, torch.Tensor], list[float]]:
    trained = load_file(str(root / name / "final" / "trained.safetensors"))
    return trained, json.loads((root / name / "final" / "training.json").read_text())["losses"]


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 processes: a DDP run of 4 steps and its resume from checkpoint 2; an FSDP2 run of 4 steps; an FSDP2 run SIGKILLed after step 3
    (checkpoint 2 written), then resumed; the FSDP2 run as two machines of one process each."""
    root = tmp_path_factory.mktemp("sharded")
    launch(root, "ddp")
    copy_until_checkpoint_2(root, "ddp", "ddp-resumed")
    launch(root, "ddp-resumed")
    launch(root, "full")
    with pytest.raises(mp.ProcessExitedException, match="SIGKILL"):
        launch(root, "killed")
    launch(root, "resumed")
    launch(root, "machines")
    return root


def test_a_sigkilled_sharded_run_resumes_bit_exactly(sharded_runs: Path) -> None:
    root = sharded_runs
    full, full_losses = final(root, "full")
    resumed, resumed_losses = final(root, "killed")
    assert resumed_losses == full_losses and len(full_losses) == 4
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    shards = sorted((root / "full" / "checkpoints" / "checkpoint-4" / ckpt.TENSORS).glob("*.safetensors"))
    assert len(shards) == WORLD  # each rank wrote its own shards
    assert ckpt.read_state(root / "killed" / "checkpoints" / "checkpoint-2")["world_size"] == WORLD


def test_a_ddp_run_resumes_bit_exactly_from_the_same_format(sharded_runs: Path) -> None:
    (ddp, ddp_losses), (resumed, resumed_losses) = (
        final(sharded_runs, "ddp"),
        final(sharded_runs, "ddp-resumed"),
    )
    assert resumed_losses == ddp_losses and all(torch.equal(ddp[k], resumed[k]) for k in ddp)


def test_the_sharded_export_is_the_ddp_export(sharded_runs: Path) -> None:
    root = sharded_runs
    (ddp, ddp_losses), (sharded, sharded_losses) = final(root, "ddp"), final(root, "full")
    torch.testing.assert_close(torch.tensor(sharded_losses), torch.tensor(ddp_losses), rtol=1e-4, atol=1e-5)
    assert ddp.keys() == sharded.keys()
    for key in ddp:
        torch.testing.assert_close(sharded[key], ddp[key], rtol=1e-4, atol=1e-5, msg=key)
    pipelines = [root / name / "final" / "pipeline" for name in ("ddp", "full")]
    files = [
        sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) for folder in pipelines
    ]
    assert files[0] == files[1]
    weights = [
        load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors")) for folder in pipelines
    ]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:  # full (gathered) weights, the frozen ones equal, the trained ones close
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-4, atol=1e-5, msg=key)


def test_one_process_resumes_a_sharded_checkpoint_falling_back_from_a_damaged_one(
    sharded_runs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The 2-process checkpoint re-shards into one process (same global batch of 4); checkpoint 4,
    truncated, is skipped with a warning naming it."""
    root = sharded_runs
    shutil.copytree(root / "full", root / "one")
    shutil.rmtree(root / "one" / "final")
    shard = sorted((root / "one" / "checkpoints" / "checkpoint-4" / ckpt.TENSORS).glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        one = train_tiny(
            root, "one", settings(root, "one") | {"optim": {"batch_size": 4}}, resume=True, allow_changes=True
        )
    assert "skipping checkpoint checkpoint-4" in caplog.text and shard.name in caplog.text
    full, full_losses = final(root, "full")
    assert one.losses[:2] == full_losses[:2]  # restored from checkpoint 2, not retrained
    torch.testing.assert_close(torch.tensor(one.losses), torch.tensor(full_losses), rtol=1e-4, atol=1e-5)
    trained, _ = final(root, "one")
    for key in full:
        torch.testing.assert_close(trained[key], full[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_machines_on_localhost_train_as_one_group(sharded_runs: Path) -> None:
    """Each process the only one of its machine (local rank 0 twice), one shared output folder: the run
    is the 2-process run, bit for bit, and its checkpoints hold both ranks' shards and generators."""
    root = sharded_runs
    (full, full_losses), (machines, machine_losses) = final(root, "full"), final(root, "machines")
    assert machine_losses == full_losses
    assert all(torch.equal(full[k], machines[k]) for k in full)
    checkpoint = root / "machines" / "checkpoints" / "checkpoint-4"
    assert len(list((checkpoint / ckpt.TENSORS).glob("*.safetensors"))) == WORLD
    assert sorted(p.name for p in checkpoint.glob("rng-rank*")) == [
        "rng-rank0.safetensors",
        "rng-rank1.safetensors",
    ]


# ----------------------------------------------------------------------------------------- DeepSpeed
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is the layerflow[deepspeed] extra"
)
ZERO_STAGES = ("zero2", "zero3")
#: CPU offload runs DeepSpeedCPUAdam (accelerate's swap for AdamW), which DeepSpeed compiles on first use.
OFFLOAD_BUILDS = shutil.which("c++") is not None
#: What ``accelerate launch --config_file deepspeed-<engine>.yaml`` sets for the trainer's plugin.
ZERO_ENGINES: dict[str, dict[str, str]] = {
    "zero2": {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
    "zero3": {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
    "zero3-offload": {
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
        "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu",
        "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "cpu",
    },
}
ENGINE_PARAMS = [
    pytest.param(
        engine,
        marks=pytest.mark.skipif(
            engine.endswith("offload") and not OFFLOAD_BUILDS, reason="DeepSpeedCPUAdam needs a C++ compiler"
        ),
    )
    for engine in ZERO_ENGINES
]


def damage_newest_shard(run: Path) -> Path:
    """Truncate a tensors shard of the run's checkpoint 4 (its final export removed)."""
    shutil.rmtree(run / "final")
    shard = sorted((run / "checkpoints" / "checkpoint-4" / ckpt.TENSORS).glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard


@pytest.fixture(scope="module")
def deepspeed_runs(sharded_runs: Path) -> Path:
    """Per ZeRO stage, 2 DeepSpeed processes: a run of 4 steps; one SIGKILLed after step 3 (checkpoint 2
    written), then resumed; a copy of the first with checkpoint 4 damaged, resumed. ZeRO-3 with CPU
    offload: the run and the killed + resumed one. ZeRO-3 also resumes the ZeRO-3 checkpoint 2 with one
    DeepSpeed process, and the DDP run's checkpoint 2 with two."""
    root = sharded_runs
    for engine in ZERO_STAGES:
        launch(root, f"{engine}:full")
        with pytest.raises(mp.ProcessExitedException, match="SIGKILL"):
            launch(root, f"{engine}:killed")
        launch(root, f"{engine}:resumed")
        shutil.copytree(root / engine, root / f"{engine}-fallback")
        damage_newest_shard(root / f"{engine}-fallback")
        launch(root, f"{engine}:fallback")
    if OFFLOAD_BUILDS:  # weights and AdamW states in CPU memory: the same run, the same format
        launch(root, "zero3-offload:full")
        with pytest.raises(mp.ProcessExitedException, match="SIGKILL"):
            launch(root, "zero3-offload:killed")
        launch(root, "zero3-offload:resumed")
    copy_until_checkpoint_2(root, "zero3", "zero3-one")
    launch(root, "zero3:one", world=1)
    copy_until_checkpoint_2(root, "ddp", "zero3-from-ddp")
    launch(root, "zero3:from-ddp")
    return root


@needs_deepspeed
@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_a_sigkilled_deepspeed_run_resumes_bit_exactly(deepspeed_runs: Path, engine: str) -> None:
    """Bit for bit, except the optimizer step under CPU offload: there accelerate runs DeepSpeedCPUAdam,
    whose C++ keeps the bias corrections beta^t as running products and recomputes them with pow() after
    a resume (its step counter restarts), one rounding apart (measured: weights within 6e-7)."""
    full, full_losses = final(deepspeed_runs, engine)
    resumed, resumed_losses = final(deepspeed_runs, f"{engine}-killed")
    assert resumed_losses == full_losses and len(full_losses) == 4
    assert full.keys() == resumed.keys()
    for key in full:
        if engine.endswith("offload"):
            torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=5e-6, msg=key)
        else:
            assert torch.equal(full[key], resumed[key]), key
    checkpoint = deepspeed_runs / engine / "checkpoints" / "checkpoint-4"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "rng-rank0.safetensors",
        "rng-rank1.safetensors",
        "state.json",
        ckpt.TENSORS,
    ]  # the format of every engine, no DeepSpeed (pickle) files
    content, _ = ckpt.read_checkpoint(checkpoint)
    assert content.optimizer.keys() == {
        f"{name}.{key}" for name in full for key in ("exp_avg", "exp_avg_sq", "step")
    }
    assert all(float(content.optimizer[f"{name}.step"]) == 4 for name in full)


@needs_deepspeed
@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_the_deepspeed_export_is_the_ddp_export(deepspeed_runs: Path, engine: str) -> None:
    """Same seeds and data order as the DDP run: losses and exported weights agree within float
    tolerance, the frozen weights bit for bit (torch_autocast keeps them float32, never rounded)."""
    root = deepspeed_runs
    (ddp, ddp_losses), (zero, zero_losses) = final(root, "ddp"), final(root, engine)
    torch.testing.assert_close(torch.tensor(zero_losses), torch.tensor(ddp_losses), rtol=1e-4, atol=1e-5)
    assert ddp.keys() == zero.keys()
    for key in ddp:
        torch.testing.assert_close(zero[key], ddp[key], rtol=1e-4, atol=1e-5, msg=key)
    pipelines = [root / name / "final" / "pipeline" for name in ("ddp", engine)]
    files = [sorted(str(p.relative_to(f)) for p in f.rglob("*") if p.is_file()) for f in pipelines]
    assert files[0] == files[1]
    weights = [load_file(str(f / "transformer" / "diffusion_pytorch_model.safetensors")) for f in pipelines]
    for key in weights[0]:
        if key in ddp:
            torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(weights[1][key], weights[0][key]), key


@needs_deepspeed
@pytest.mark.parametrize("engine", ZERO_STAGES)
def test_a_damaged_deepspeed_checkpoint_falls_back_naming_it(
    deepspeed_runs: Path, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The resume skipped the truncated checkpoint 4 for checkpoint 2 and trained on to the
    uninterrupted run, bit for bit; the skip is a warning naming the damaged file."""
    root = deepspeed_runs
    (full, full_losses), (fallback, fallback_losses) = final(root, engine), final(root, f"{engine}-fallback")
    assert fallback_losses == full_losses and all(torch.equal(full[k], fallback[k]) for k in full)
    copy = root / f"{engine}-damaged"
    shutil.copytree(root / engine, copy)
    shard = damage_newest_shard(copy)
    with caplog.at_level(logging.WARNING):
        assert ckpt.newest_readable_checkpoint(copy) == copy / "checkpoints" / "checkpoint-2"
    assert "skipping checkpoint checkpoint-4" in caplog.text and shard.name in caplog.text


def assert_continues(root: Path, name: str, oracle: str) -> None:
    """Run ``name`` (resumed from another run's checkpoint 2) kept checkpoint 2's losses and trained on
    to the uninterrupted ``oracle`` run within float tolerance (another reduction order; measured here:
    weights within 1.5e-6 of weights up to 1.4, losses within 1.2e-7, so the bound has >6x headroom)."""
    (expected, expected_losses), (trained, losses) = final(root, oracle), final(root, name)
    assert losses[:2] == expected_losses[:2]  # restored from checkpoint 2, not retrained
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected_losses), rtol=1e-4, atol=1e-5)
    assert trained.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(trained[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


@needs_deepspeed
def test_one_process_resumes_a_deepspeed_checkpoint(deepspeed_runs: Path) -> None:
    """The 2-process ZeRO-2 checkpoint 2 re-shards into one plain process, the ZeRO-3 one into one
    DeepSpeed process (same global batch of 4); both continue to the 2-process run."""
    root = deepspeed_runs
    copy_until_checkpoint_2(root, "zero2", "zero2-one")
    train_tiny(
        root,
        "zero2-one",
        settings(root, "zero2-one") | {"optim": {"batch_size": 4}},
        resume=True,
        allow_changes=True,
    )
    for engine in ZERO_STAGES:
        assert_continues(root, f"{engine}-one", engine)


@needs_deepspeed
def test_deepspeed_resumes_a_ddp_checkpoint(deepspeed_runs: Path) -> None:
    """The DDP run's checkpoint 2 (torch AdamW states by parameter name) continues under ZeRO-3."""
    assert_continues(deepspeed_runs, "zero3-from-ddp", "ddp")


def lora_worker(rank: int, port: int, root: str, engine: str) -> None:
    """Stage 3 (a content LoRA on the base) in bf16 autocast with gradient checkpointing, 2 steps."""
    join_cpu_group(rank, WORLD, port)
    if engine != "ddp":
        del os.environ["ACCELERATE_USE_CPU"]
        os.environ.update(ACCELERATE_USE_DEEPSPEED="true", **ZERO_ENGINES[engine])
    options = {
        "run": {
            "max_steps": 2,
            "checkpoint_every": 2,
            "mixed_precision": "bf16",
            "output_dir": f"{root}/lora-{engine}",
        },
        "model": {"gradient_checkpointing": True, "init_from": "base"},
        "optim": {"batch_size": 2},
    }
    reset_accelerate_state()
    LayerFlowTrainer(tiny_test_config(Path(root), 3, options)).train()


@needs_deepspeed
def test_deepspeed_trains_a_lora_stage_in_bf16_with_gradient_checkpointing_as_ddp_does(
    sharded_runs: Path,
) -> None:
    """ZeRO-3 runs stage 3 (only the content LoRA trains) under torch_autocast bf16 with gradient
    checkpointing as DDP does from the same seeds and data: the same losses within bf16 rounding, the
    LoRA trained, the frozen base exported bit for bit (never rounded to bf16). The LoRA weights
    themselves are not compared: Adam's first steps move each element by about lr times the sign of its
    gradient, which the reduction order flips for near-zero gradients."""
    for engine in ("ddp", "zero3"):
        reset_accelerate_state()
        mp.start_processes(
            lora_worker, args=(free_port(), str(sharded_runs), engine), nprocs=WORLD, start_method="fork"
        )
    finals = [sharded_runs / f"lora-{engine}" / "final" for engine in ("ddp", "zero3")]
    ddp_losses, zero_losses = (json.loads((f / "training.json").read_text())["losses"] for f in finals)
    torch.testing.assert_close(torch.tensor(zero_losses), torch.tensor(ddp_losses), rtol=2e-3, atol=0.0)
    ddp, zero = (load_file(str(f / "trained.safetensors")) for f in finals)
    assert ddp.keys() == zero.keys() and ddp and all("lora" in key for key in ddp)
    assert all(zero[key].abs().max() > 0 for key in zero if "lora_B" in key)  # B starts at zero
    bases = [
        load_file(str(f / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors")) for f in finals
    ]
    assert bases[0].keys() == bases[1].keys()
    assert all(torch.equal(bases[0][key], bases[1][key]) for key in bases[0])
