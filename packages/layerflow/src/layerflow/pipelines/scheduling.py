"""The CogVideoX-2B noise schedule LayerFlow samples with, for either diffusers CogVideoX scheduler."""

from __future__ import annotations

from typing import Any, Literal

from diffusers.schedulers.scheduling_ddim_cogvideox import CogVideoXDDIMScheduler
from diffusers.schedulers.scheduling_dpm_cogvideox import CogVideoXDPMScheduler

SchedulerKind = Literal["dpm", "ddim"]

#: v-prediction, zero terminal SNR with SNR shift 3.0, trailing spacing (diffusers' 2B conversion).
COGVIDEOX_2B_SCHEDULE: dict[str, Any] = {
    "snr_shift_scale": 3.0,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True,
    "timestep_spacing": "trailing",
}


def make_scheduler(kind: SchedulerKind = "dpm") -> CogVideoXDPMScheduler | CogVideoXDDIMScheduler:
    """``"dpm"``: DPM++ 2M SDE, the official LayerFlow sampler (default); ``"ddim"``: deterministic DDIM."""
    if kind == "dpm":
        return CogVideoXDPMScheduler(**COGVIDEOX_2B_SCHEDULE)
    if kind == "ddim":
        return CogVideoXDDIMScheduler(**COGVIDEOX_2B_SCHEDULE)
    raise ValueError(f"scheduler kind must be 'dpm' or 'ddim', got {kind!r}")


def switch_scheduler(
    scheduler: CogVideoXDPMScheduler | CogVideoXDDIMScheduler, kind: SchedulerKind
) -> CogVideoXDPMScheduler | CogVideoXDDIMScheduler:
    """The same schedule (config) in the other sampler."""
    cls = {"dpm": CogVideoXDPMScheduler, "ddim": CogVideoXDDIMScheduler}.get(kind)
    if cls is None:
        raise ValueError(f"scheduler kind must be 'dpm' or 'ddim', got {kind!r}")
    return cls.from_config(scheduler.config)
