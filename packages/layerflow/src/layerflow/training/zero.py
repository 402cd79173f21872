"""DeepSpeed ZeRO-2/ZeRO-3 (optionally with CPU offload) through accelerate.

accelerate builds the engine from the launcher's DeepSpeed config (``configs/accelerate/deepspeed-*``);
the trainer owns the values that shape training, so they are filled in here from the stage config
(:func:`deepspeed_plugin`), and a config file that sets one of them differently is refused. Mixed
precision is DeepSpeed's ``torch_autocast``, not its ``bf16`` mode: the ``bf16`` mode casts the whole
transformer to bfloat16, which would round the frozen base weights the export writes; autocast keeps
them float32 as under DDP/FSDP2. The trainer passes its own torch AdamW (the engine wraps it in its
ZeRO optimizer) and steps its LR schedule itself, so optimizer and schedule are those of every engine.
With CPU offload accelerate swaps that AdamW for DeepSpeedCPUAdam over the same parameter groups (lr,
betas, eps, weight decay).

Under ZeRO-3 a parameter holds only this rank's partition; :func:`full_fp32` gathers the full float32
values (DeepSpeed's ``safe_get_full_fp32_param``, collective) for the EMA and the export.

Checkpoints hold no DeepSpeed files: :func:`checkpoint_tensors` gathers the full float32 parameters and
AdamW states (DeepSpeed's tensor-fragment API) under the names a torch optimizer has under DDP/FSDP2,
and :func:`load_checkpoint_tensors` partitions them into whatever engine and process count resumes,
so a DeepSpeed checkpoint is the engine-independent checkpoint of every other engine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from accelerate.utils import DeepSpeedPlugin, is_deepspeed_available

from .config import ConfigError, TrainConfig

_AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
#: The DeepSpeed releases whose ZeRO optimizer internals the checkpoint code reads (the ``deepspeed`` extra).
SUPPORTED_DEEPSPEED = "0.19"


def deepspeed_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the launcher asked for DeepSpeed (``accelerate launch`` with a DeepSpeed config sets it)."""
    environ = os.environ if environ is None else environ
    return environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def trainer_settings(config: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed settings that follow from the stage config."""
    optim, precision = config.optim, config.run.mixed_precision
    autocast = (
        {"enabled": True, "dtype": _AUTOCAST_DTYPES[precision]}
        if precision in _AUTOCAST_DTYPES
        else {"enabled": False}
    )
    return {
        "train_micro_batch_size_per_gpu": optim.batch_size,
        "gradient_accumulation_steps": optim.gradient_accumulation_steps,
        "gradient_clipping": optim.max_grad_norm if optim.max_grad_norm is not None else 0.0,
        "torch_autocast": autocast,
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
    }


def deepspeed_plugin(config: TrainConfig) -> DeepSpeedPlugin:
    """accelerate's DeepSpeed plugin from the launcher's environment, with :func:`trainer_settings`
    filled in where it says ``"auto"`` (accelerate's inline ``deepspeed_config`` leaves them so);
    :class:`ConfigError` when the DeepSpeed config sets one of them otherwise, or defines an
    optimizer or scheduler (the stage config's ``optim`` section defines those)."""
    if not is_deepspeed_available():
        raise ConfigError(
            "DeepSpeed was asked for (ACCELERATE_USE_DEEPSPEED=true) but is not installed: "
            "pip install 'layerflow[deepspeed]'"
        )
    from importlib.metadata import version

    installed = version("deepspeed")
    if not installed.startswith(SUPPORTED_DEEPSPEED + "."):
        raise ConfigError(
            f"DeepSpeed {installed} is installed; the trainer's checkpoints read the ZeRO optimizer "
            f"internals of DeepSpeed {SUPPORTED_DEEPSPEED}.x: pip install 'layerflow[deepspeed]'"
        )
    plugin = DeepSpeedPlugin()
    # Every rank loads the starting point whole (as the FSDP2 configs' cpu_ram_efficient_loading=false):
    # ZeRO-3's partitioned init would also partition the frozen T5 that runs outside the engine.
    plugin.zero3_init_flag = False
    ds_config: dict[str, Any] = plugin.deepspeed_config
    owned = sorted({"optimizer", "scheduler"} & set(ds_config))
    if owned:
        raise ConfigError(
            f"the DeepSpeed config defines {owned}: remove them, the stage config's optim section sets the "
            "optimizer and LR schedule under every engine"
        )
    conflicts = []
    for key, value in trainer_settings(config).items():
        given = ds_config.get(key, "auto")
        if given != "auto" and _normalised(given) != _normalised(value):
            conflicts.append(f"{key}={given!r} (the stage config gives {value!r})")
        ds_config[key] = value
    if conflicts:
        raise ConfigError(
            "the DeepSpeed config sets what the stage config owns: "
            + "; ".join(conflicts)
            + ': write "auto" there (or leave it out)'
        )
    return plugin


def _normalised(value: Any) -> Any:
    """DeepSpeed configs write booleans as ``true``/``"true"`` and numbers as ints or floats alike."""
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items()}
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def full_fp32(parameters: Mapping[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The full float32 values of engine-managed parameters, by name (collective: every rank calls it
    with the same names in the same order)."""
    from deepspeed.utils import safe_get_full_fp32_param

    full = {}
    for name, param in parameters.items():
        value = safe_get_full_fp32_param(param)
        if value is None:
            raise RuntimeError(f"parameter {name} is not managed by the DeepSpeed engine's ZeRO optimizer")
        full[name] = value.detach()
    return full


_MOMENTS = ("exp_avg", "exp_avg_sq")


def checkpoint_tensors(
    engine: Any, trained: Mapping[str, torch.nn.Parameter]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full float32 trained weights and AdamW states of a DeepSpeed engine, keyed and described as
    :func:`~layerflow.training.checkpointing.checkpoint_tensors` keys a torch optimizer's under DDP/FSDP2
    (collective: every rank gets every full tensor)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    zero_optimizer = engine.optimizer
    partitions = _fp32_partitions(engine)
    if not all(zero_optimizer.optimizer.state.get(p) for p in partitions):
        raise RuntimeError("the DeepSpeed optimizer has no state yet: checkpoint after an optimizer step")
    step = _common_step(zero_optimizer.optimizer.state[p]["step"] for p in partitions)
    tensors = {}
    for name, param in trained.items():  # one at a time into CPU memory: a ZeRO-3 GPU holds partitions
        tensors[f"trained.{name}"] = full_fp32({name: param})[name].cpu()
        for key in _MOMENTS:
            tensors[f"optimizer.{name}.{key}"] = safe_get_full_optimizer_state(param, key).detach().cpu()
        tensors[f"optimizer.{name}.step"] = step.clone()
    return tensors, {"param_groups": _param_groups(zero_optimizer.optimizer, list(trained)), "scalars": {}}


def checkpoint_destination(trained: Mapping[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Empty full-size tensors a checkpoint's :func:`checkpoint_tensors` load into on every rank."""
    destination = {}
    for name, param in trained.items():
        shape = tuple(getattr(param, "ds_shape", param.shape))  # a ZeRO-3 parameter's own shape is empty
        for key in (f"trained.{name}", *(f"optimizer.{name}.{moment}" for moment in _MOMENTS)):
            destination[key] = torch.empty(shape, dtype=torch.float32)
        destination[f"optimizer.{name}.step"] = torch.empty((), dtype=torch.float32)
    return destination


@torch.no_grad()
def load_checkpoint_tensors(
    engine: Any,
    trained: Mapping[str, torch.nn.Parameter],
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
) -> None:
    """Put full float32 weights and AdamW states (loaded from any engine's checkpoint) into a DeepSpeed
    engine's partitions: the model's weights, ZeRO's float32 master copy and its AdamW states."""
    import deepspeed

    zero_optimizer = engine.optimizer
    torch_optimizer = zero_optimizer.optimizer
    step = _common_step(tensors[f"optimizer.{name}.step"] for name in trained)
    # With CPU offload accelerate swaps our AdamW for DeepSpeedCPUAdam (same parameter groups: lr,
    # betas, eps, weight decay), which counts steps in a Python int where torch's AdamW keeps a tensor.
    integer_step = type(torch_optimizer).__name__ == "DeepSpeedCPUAdam"
    for partition in _fp32_partitions(engine):
        # A fresh engine creates AdamW's state at its first step; the loaded one goes into it now.
        if not torch_optimizer.state.get(partition):
            torch_optimizer.state[partition] = {key: torch.zeros_like(partition) for key in _MOMENTS}
        state = torch_optimizer.state[partition]
        state["step"] = int(step) if integer_step else step.clone()
    if engine.zero_optimization_stage() < 3:
        # ZeRO-1/2 map each parameter to its slice of the AdamW state only after a step; map them now.
        zero_optimizer._lazy_init_hp_params_optimizer_state()
    saved_groups = meta["param_groups"]
    if len(saved_groups) != len(torch_optimizer.param_groups):
        raise RuntimeError(
            f"the checkpoint has {len(saved_groups)} optimizer parameter groups, this optimizer "
            f"{len(torch_optimizer.param_groups)}"
        )
    for group, saved in zip(torch_optimizer.param_groups, saved_groups):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k != "params"})
    with deepspeed.zero.GatheredParameters(
        list(trained.values()), modifier_rank=0
    ):  # the weights the model computes with
        for name, param in trained.items():
            param.data.copy_(tensors[f"trained.{name}"].to(param.device))
    for name, param in trained.items():
        _set_fp32(param, tensors[f"trained.{name}"], None)
        for key in _MOMENTS:
            _set_fp32(param, tensors[f"optimizer.{name}.{key}"], key)


def _set_fp32(param: torch.nn.Parameter, value: torch.Tensor, key: str | None) -> None:
    """Set this rank's part of a parameter's float32 master weights (``key`` None) or AdamW state.

    ZeRO-3 goes through the local API with the slice cut here: DeepSpeed 0.19.8's
    ``safe_set_full_fp32_param``/``safe_set_full_optimizer_state`` slice the full value without the
    padding ZeRO-3 adds, and fail on the last rank when a size does not divide by the process count."""
    from deepspeed.utils import (
        safe_set_full_fp32_param,
        safe_set_full_optimizer_state,
        safe_set_local_fp32_param,
        safe_set_local_optimizer_state,
    )

    value = value.to(device=param.device, dtype=torch.float32)
    if hasattr(param, "ds_tensor"):
        partitioned: Any = param  # ZeRO-3 adds its partition attributes, untyped
        size = partitioned.ds_tensor.numel()
        group = partitioned.ds_process_group
        padded = torch.nn.functional.pad(
            value.flatten(), (0, size * dist.get_world_size(group) - value.numel())
        )
        local = padded.narrow(0, size * dist.get_rank(group), size)
        if key is None:
            safe_set_local_fp32_param(param, local)
        else:
            safe_set_local_optimizer_state(param, local, key)
    elif key is None:
        safe_set_full_fp32_param(param, value)
    else:
        safe_set_full_optimizer_state(param, value, key)


def _fp32_partitions(engine: Any) -> list[torch.Tensor]:
    """The flat float32 partitions ZeRO's torch optimizer steps (its AdamW state is keyed by them):
    ZeRO-1/2 keep them in the optimizer's parameter groups, ZeRO-3 puts them there only during a step."""
    zero_optimizer = engine.optimizer
    if engine.zero_optimization_stage() >= 3:
        return list(zero_optimizer.fp32_partitioned_groups_flat)
    return [p for group in zero_optimizer.optimizer.param_groups for p in group["params"]]


def _common_step(steps: Any) -> torch.Tensor:
    """AdamW's step count, one for all parameters (the trainer steps them together), as a float32
    tensor; each count may be a tensor (torch's AdamW) or an int (DeepSpeedCPUAdam)."""
    found = [torch.as_tensor(step, dtype=torch.float32, device="cpu").reshape(()) for step in steps]
    if any(not torch.equal(step, found[0]) for step in found):
        raise RuntimeError(
            f"AdamW step counts differ between parameters: {sorted({float(s) for s in found})}"
        )
    return found[0]


def _param_groups(optimizer: torch.optim.Optimizer, names: list[str]) -> list[dict[str, Any]]:
    """The optimizer's hyper-parameters as torch's ``get_optimizer_state_dict`` gives them (the
    parameters by name): the trainer's AdamW has one group of all trained parameters."""
    if len(optimizer.param_groups) != 1:
        raise RuntimeError(
            f"expected the trainer's one AdamW parameter group, found {len(optimizer.param_groups)}"
        )
    (group,) = optimizer.param_groups
    return [{**{k: v for k, v in group.items() if k != "params"}, "params": names}]
