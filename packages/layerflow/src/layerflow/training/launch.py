"""Refuse a launch that is not what the user asked for, before anything loads.

``accelerate launch`` can start processes that silently do not form one group: on a machine without
GPUs it turns FSDP/DeepSpeed off (its state stays ``DistributedType.NO``) and each of the launched
processes trains alone, all writing one output folder; ``accelerate launch --cpu --num_processes N``
starts a single process. What arrived is read from the launcher's environment (``WORLD_SIZE``,
``ACCELERATE_USE_FSDP``, ...) and compared with what accelerate set up; a mismatch is a
:class:`LaunchError` whose one line names what happened and the launch that works. DeepSpeed runs on
a CPU-only machine too (the trainer gives it a gloo group), but not with ``ACCELERATE_USE_CPU``, which
turns it off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from accelerate import Accelerator
from accelerate.utils import DistributedType

#: The launch that runs N processes as one gloo group on a CPU-only machine (what the tests use).
CPU_LAUNCH = "ACCELERATE_USE_CPU=yes torchrun --nproc_per_node {n} -m layerflow.training ..."
#: The DeepSpeed launch that runs on a CPU-only machine (ACCELERATE_USE_CPU would turn DeepSpeed off).
CPU_DEEPSPEED_LAUNCH = (
    "ACCELERATE_USE_DEEPSPEED=true ACCELERATE_DEEPSPEED_ZERO_STAGE=2 "
    "torchrun --nproc_per_node {n} -m layerflow.training ..."
)
#: The engines an ``accelerate config`` can ask for, by the variable ``accelerate launch`` sets.
ENGINE_VARIABLES = {"FSDP": "ACCELERATE_USE_FSDP", "DeepSpeed": "ACCELERATE_USE_DEEPSPEED"}
ENGINE_TYPES = {"FSDP": DistributedType.FSDP, "DeepSpeed": DistributedType.DEEPSPEED}


class LaunchError(RuntimeError):
    """The processes launched are not the distributed run that was asked for."""


def requested_engine(environ: Mapping[str, str]) -> str | None:
    """The sharding engine the launcher asked for (``"FSDP"``, ``"DeepSpeed"``), or ``None``."""
    for engine, variable in ENGINE_VARIABLES.items():
        if environ.get(variable, "false").lower() == "true":
            return engine
    return None


def launch_problem(
    environ: Mapping[str, str], num_processes: int, distributed_type: DistributedType, device: str
) -> str | None:
    """Why this launch is not the run that was asked for (``None``: it is).

    ``environ``: the launcher's environment; ``num_processes``, ``distributed_type``, ``device``:
    what accelerate made of it.
    """
    launched = int(environ.get("WORLD_SIZE", "1") or 1)
    engine = requested_engine(environ)
    if launched > 1 and num_processes != launched:
        cause = (
            f"{engine} was asked for, but accelerate runs it only on GPUs and left each process alone on {device}"
            if engine is not None and distributed_type == DistributedType.NO
            else f"accelerate set up {num_processes} process(es) ({distributed_type.value})"
        )
        return (
            f"{launched} processes were launched (WORLD_SIZE={launched}) but they do not form one group: "
            f"{cause}; each would train alone into the same output folder. On a CPU-only machine launch "
            f"`{CPU_LAUNCH.format(n=launched)}` (DDP over gloo)"
        )
    if engine == "DeepSpeed" and distributed_type != DistributedType.DEEPSPEED:
        return (
            f"DeepSpeed was asked for (ACCELERATE_USE_DEEPSPEED=true) but accelerate runs "
            f"{distributed_type.value} on {device} (ACCELERATE_USE_CPU turns DeepSpeed off); on a CPU-only "
            f"machine launch `{CPU_DEEPSPEED_LAUNCH.format(n=max(launched, 2))}`"
        )
    if engine is not None and distributed_type != ENGINE_TYPES[engine]:
        return (
            f"{engine} was asked for ({ENGINE_VARIABLES[engine]}=true) but accelerate runs "
            f"{distributed_type.value} on {device}: {engine} needs GPUs; on a CPU-only machine launch "
            f"`{CPU_LAUNCH.format(n=max(launched, 2))}` (DDP over gloo)"
        )
    # accelerate's simple launcher (``--cpu``, or no multi-process flag) writes ACCELERATE_USE_CPU as
    # Python's "True"/"False" and a rendezvous port only when --num_processes > 1, but starts one process.
    if (
        environ.get("ACCELERATE_USE_CPU") in ("True", "False")
        and "MASTER_PORT" in environ
        and "WORLD_SIZE" not in environ
        and num_processes == 1
    ):
        return (
            "accelerate launch was asked for several processes but started one (with --cpu, or without "
            "GPUs, it starts a single process whatever --num_processes says): this would train as one "
            "process. On a CPU-only machine launch "
            f"`{CPU_LAUNCH.format(n=2)}` (DDP over gloo)"
        )
    return None


def check_launch(accelerator: Accelerator, environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`LaunchError` when the launched processes are not the run that was asked for."""
    problem = launch_problem(
        os.environ if environ is None else environ,
        accelerator.num_processes,
        accelerator.distributed_type,
        accelerator.device.type,
    )
    if problem is not None:
        raise LaunchError(problem)
