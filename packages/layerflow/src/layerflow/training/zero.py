"""DeepSpeed ZeRO-2/ZeRO-3 (optionally with CPU offload) through accelerate.

accelerate builds the engine from the launcher's DeepSpeed config (``configs/accelerate/deepspeed-*``);
the trainer owns the values that shape training, so they are filled in here from the stage config
(:func:`deepspeed_plugin`), and a config file that sets one of them differently is refused. Mixed
precision is DeepSpeed's ``torch_autocast``, not its ``bf16`` mode: the ``bf16`` mode casts the whole
transformer to bfloat16, which would round the frozen base weights the export writes; autocast keeps
them float32 as under DDP/FSDP2. The trainer passes its own torch AdamW (the engine wraps it in its
ZeRO optimizer) and steps its LR schedule itself, so optimizer and schedule are those of every engine.

Under ZeRO-3 a parameter holds only this rank's partition; :func:`full_fp32` gathers the full float32
values (DeepSpeed's ``safe_get_full_fp32_param``, collective) for the EMA, the checkpoint's
consolidated weights and the export.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from accelerate.utils import DeepSpeedPlugin, is_deepspeed_available

from .config import ConfigError, TrainConfig

_AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


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
