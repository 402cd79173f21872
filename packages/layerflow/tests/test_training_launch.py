"""A launch that is not the run that was asked for ends in a one-line error before training, naming what
happened and the launch that works; the launch that works (torchrun + ACCELERATE_USE_CPU) passes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import (
    prepare_deepspeed_cmd_env,
    prepare_multi_gpu_env,
    prepare_simple_launcher_cmd_env,
)

from layerflow.training.config import ConfigError
from layerflow.training.launch import launch_problem
from layerflow.training.testing import tiny_test_config
from layerflow.training.zero import deepspeed_plugin

TRAIN = ["-m", "layerflow.training", "--stage", "1", "--max-steps", "1", "--no-progress"]
CONFIGS = Path(deepspeed_plugin.__code__.co_filename).parent / "configs" / "accelerate"
TORCHRUN = "ACCELERATE_USE_CPU=yes torchrun --nproc_per_node 2 -m layerflow.training"


def accelerate_env(*flags: str) -> tuple[dict[str, str], bool]:
    """The environment ``accelerate launch FLAGS`` gives its processes (accelerate's own code) and
    whether it starts them through torchrun (which adds ``WORLD_SIZE``)."""
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args([*flags, *TRAIN]))
    if args.use_fsdp and not args.cpu:
        return prepare_multi_gpu_env(args), True
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ""  # launch_command sets it first
        return prepare_deepspeed_cmd_env(args)[1], True
    return prepare_simple_launcher_cmd_env(args)[1], False


@pytest.mark.slow
def test_accelerate_fsdp_launch_on_cpu_is_refused_by_every_process(tmp_path: Path) -> None:
    """accelerate starts 2 processes that stay ``DistributedType.NO`` on CPU: each would train alone."""
    accelerate = shutil.which("accelerate") or pytest.skip("no accelerate command")
    command = [accelerate, "launch", "--num_processes", "2", "--use_fsdp", "--fsdp_version", "2", *TRAIN]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [*command, "--output-root", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    # One line from each process (the two may land on one line of the shared stderr).
    errors = re.findall(r"error: [^\n]*?\(DDP over gloo\)", result.stderr)
    assert len(errors) == 2, result.stderr[-3000:]
    for line in errors:
        assert line.startswith(
            "error: 2 processes were launched (WORLD_SIZE=2) but they do not form one group"
        )
        assert "FSDP was asked for" in line and TORCHRUN in line
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("flags", [["--cpu", "--num_processes", "2"], ["--num_processes", "2"]])
def test_accelerate_cpu_launch_that_starts_one_of_two_processes_is_refused(flags: list[str]) -> None:
    env, torchrun = accelerate_env(*flags)
    assert not torchrun  # accelerate's simple launcher: one process, whatever --num_processes says
    problem = launch_problem(env, 1, DistributedType.NO, "cpu")
    assert problem is not None and "started one" in problem and TORCHRUN in problem


def test_a_requested_engine_the_device_cannot_run_is_refused() -> None:
    env, torchrun = accelerate_env("--num_processes", "1", "--use_fsdp", "--fsdp_version", "2")
    assert torchrun
    problem = launch_problem(env | {"WORLD_SIZE": "1"}, 1, DistributedType.NO, "cpu")
    assert problem is not None and problem.startswith("FSDP was asked for (ACCELERATE_USE_FSDP=true)")
    # DeepSpeed with ACCELERATE_USE_CPU: accelerate runs plain gloo DDP; the DeepSpeed launch that works
    # on a CPU-only machine leaves ACCELERATE_USE_CPU out.
    deepspeed = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_USE_CPU": "yes", "WORLD_SIZE": "2"}
    refused = str(launch_problem(deepspeed, 2, DistributedType.MULTI_CPU, "cpu"))
    assert refused.startswith("DeepSpeed was asked for (ACCELERATE_USE_DEEPSPEED=true) but accelerate runs")
    assert "ACCELERATE_USE_DEEPSPEED=true ACCELERATE_DEEPSPEED_ZERO_STAGE=2 torchrun" in refused
    assert "ACCELERATE_USE_CPU=yes" not in refused.split("launch `")[1]


def test_the_launches_that_work_pass() -> None:
    torchrun = {"ACCELERATE_USE_CPU": "yes", "WORLD_SIZE": "2", "MASTER_PORT": "29500"}
    assert launch_problem(torchrun, 2, DistributedType.MULTI_CPU, "cpu") is None
    assert launch_problem({}, 1, DistributedType.NO, "cpu") is None  # plain python
    env, _ = accelerate_env("--cpu", "--num_processes", "1")
    assert launch_problem(env, 1, DistributedType.NO, "cpu") is None
    fsdp = {"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "8"}
    assert launch_problem(fsdp, 8, DistributedType.FSDP, "cuda") is None
    deepspeed = {"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "8"}  # DeepSpeed runs under the trainer
    assert launch_problem(deepspeed, 8, DistributedType.DEEPSPEED, "cuda") is None
    assert launch_problem(deepspeed | {"WORLD_SIZE": "2"}, 2, DistributedType.DEEPSPEED, "cpu") is None


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("deepspeed-*.yaml")), ids=lambda p: p.stem)
def test_the_shipped_deepspeed_configs_get_the_stage_configs_settings(
    config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What ``accelerate launch --config_file deepspeed-*.yaml`` sets, read by the trainer's plugin: the
    ZeRO stage and offload of the file, batch/accumulation/clipping/autocast from the stage config."""
    env, _ = accelerate_env("--config_file", str(config))
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    stage_config = tiny_test_config(tmp_path, 1, {"optim": {"gradient_accumulation_steps": 2}})
    ds = deepspeed_plugin(stage_config).deepspeed_config
    settings = yaml.safe_load(config.read_text())["deepspeed_config"]
    assert ds["zero_optimization"]["stage"] == settings["zero_stage"]
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == settings["offload_optimizer_device"]
    assert ds["gradient_accumulation_steps"] == 2 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["bf16"] == {"enabled": False} and ds["torch_autocast"]["enabled"] == (
        stage_config.run.mixed_precision == "bf16"
    )


def test_a_deepspeed_config_that_overrides_the_stage_config_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    file = tmp_path / "ds.json"
    file.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 16}))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(file))
    with pytest.raises(ConfigError, match=r"train_micro_batch_size_per_gpu=16 \(the stage config gives 2\)"):
        deepspeed_plugin(tiny_test_config(tmp_path, 1))


def test_a_deepspeed_release_whose_internals_the_checkpoints_do_not_read_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.20.1")
    with pytest.raises(ConfigError, match=r"^DeepSpeed 0\.20\.1 is installed; .* DeepSpeed 0\.19\.x"):
        deepspeed_plugin(tiny_test_config(tmp_path, 1))
