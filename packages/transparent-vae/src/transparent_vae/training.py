"""Training loop for the offset encoder and transparent decoder, with safetensors checkpoints and resume.

LayerDiffuse never released its training code; this follows the paper's recipe (identity +
reconstruction + optional PatchGAN) and adds an alpha temporal-consistency term for video. The base
VAE stays frozen, but gradients of the identity and reconstruction losses flow through its decoder
into the offset encoder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ._files import atomic_directory
from ._frames import fold_frames
from .alpha import signed_to_unit
from .losses import (
    PatchDiscriminator,
    alpha_temporal_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    identity_loss,
    reconstruction_losses,
)
from .modeling import load_checked_state_dict
from .vae import TransparentVAE

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
DISCRIMINATOR_WEIGHTS = "discriminator.safetensors"


@dataclass
class TrainingConfig:
    """Hyper-parameters of :func:`train_transparent_vae` (paper weights: identity 1, adversarial 0.01).

    Attributes:
        max_steps: optimisation steps in total (a resumed run continues up to this number).
        learning_rate, weight_decay, betas: AdamW for the encoder and decoder.
        identity_weight, rgb_weight, alpha_weight: loss weights.
        adversarial_weight: PatchGAN hinge-loss weight; 0 disables the discriminator.
        adversarial_start_step: first step at which the generator gets the adversarial term.
        discriminator_learning_rate: AdamW learning rate of the discriminator.
        discriminator_layers: PatchGAN depth (3 judges 70x70 patches; each layer needs 2x more pixels).
        temporal_weight: alpha temporal-consistency weight (video batches only).
        max_grad_norm: gradient clipping of the encoder + decoder (``None``: off).
        checkpoint_every: write a checkpoint every N steps (and at the end) when an output dir is given.
        keep_checkpoints: how many of the newest checkpoints to keep (``None``: all).
        seed: seeds torch before the discriminator is built.
        progress: show a tqdm progress bar.
    """

    max_steps: int = 1000
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    identity_weight: float = 1.0
    rgb_weight: float = 1.0
    alpha_weight: float = 1.0
    adversarial_weight: float = 0.0
    adversarial_start_step: int = 0
    discriminator_learning_rate: float = 1e-4
    discriminator_layers: int = 3
    temporal_weight: float = 0.0
    max_grad_norm: float | None = 1.0
    checkpoint_every: int = 500
    keep_checkpoints: int | None = 2
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1 or None, got {self.keep_checkpoints}")
        for name in (
            "identity_weight",
            "rgb_weight",
            "alpha_weight",
            "adversarial_weight",
            "temporal_weight",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class TrainingResult:
    """What :func:`train_transparent_vae` did: the last step, per-step losses, the last checkpoint."""

    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


@dataclass
class LossTerms:
    """One step's losses (``total`` is the weighted sum the encoder and decoder minimise)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    predicted: torch.Tensor
    target: torch.Tensor


def compute_losses(
    vae: TransparentVAE,
    rgba: torch.Tensor,
    config: TrainingConfig,
    discriminator: PatchDiscriminator | None = None,
) -> LossTerms:
    """Encode, decode through the frozen base VAE and the transparent decoder, and weigh the losses."""
    encoded = vae.encode_offset(rgba)
    decoded = vae.base_vae.decode(encoded.raw)
    pixels = signed_to_unit(decoded)
    predicted = vae.decoder.predict_raw(pixels, encoded.raw, frame_index=vae.frame_index(pixels))
    rgb_loss, alpha_loss = reconstruction_losses(predicted, encoded.padded_rgb, encoded.alpha)
    terms = {"identity": identity_loss(decoded, encoded.grey), "rgb": rgb_loss, "alpha": alpha_loss}
    total = (
        config.identity_weight * terms["identity"]
        + config.rgb_weight * terms["rgb"]
        + config.alpha_weight * terms["alpha"]
    )
    if config.temporal_weight > 0 and predicted.ndim == 5 and predicted.shape[2] > 1:
        terms["temporal"] = alpha_temporal_loss(predicted[:, 3:], encoded.alpha)
        total = total + config.temporal_weight * terms["temporal"]
    target = torch.cat([encoded.padded_rgb, encoded.alpha], dim=1)
    if discriminator is not None:
        terms["generator"] = hinge_generator_loss(discriminator(_frames(predicted.clamp(0, 1))))
        total = total + config.adversarial_weight * terms["generator"]
    return LossTerms(total, terms, predicted, target)


def _frames(x: torch.Tensor) -> torch.Tensor:
    return fold_frames(x) if x.ndim == 5 else x


def train_transparent_vae(
    vae: TransparentVAE,
    data: Iterable[torch.Tensor],
    config: TrainingConfig | None = None,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    resume_from: str | os.PathLike[str] | Literal["latest"] | None = None,
) -> TrainingResult:
    """Train ``vae.encoder`` and ``vae.decoder`` (the base VAE is frozen: ``requires_grad_(False)``, eval).

    Args:
        vae: the transparent VAE to train in place.
        data: batches of straight RGBA in ``[0, 1]`` (``[B, 4, H, W]`` or ``[B, 4, T, H, W]``); restarted
            when exhausted. On resume the first ``step`` batches of a fresh iterator are skipped, so a
            deterministic iterable (e.g. :class:`~transparent_vae.synthetic.RGBAShapes`) resumes exactly.
        config: hyper-parameters.
        output_dir: where ``checkpoint-<step>/`` folders go (safetensors weights + optimizer state).
        resume_from: a checkpoint folder, or ``"latest"`` for the newest one in ``output_dir`` (a fresh
            run when there is none yet).

    Returns:
        the final step, per-step losses and the last checkpoint written.
    """
    config = config or TrainingConfig()
    output = Path(output_dir) if output_dir is not None else None
    device = next(vae.encoder.parameters()).device
    torch.manual_seed(config.seed)

    # 1. Trainable parts, optimisers and (optionally) the discriminator.
    vae.base_vae.requires_grad_(False).eval()
    vae.encoder.train()
    vae.decoder.train()
    parameters = [p for module in (vae.encoder, vae.decoder) for p in module.parameters()]
    optimizer = torch.optim.AdamW(
        parameters, lr=config.learning_rate, weight_decay=config.weight_decay, betas=config.betas
    )
    discriminator = (
        PatchDiscriminator(num_layers=config.discriminator_layers).to(device)
        if config.adversarial_weight > 0
        else None
    )
    disc_optimizer = (
        torch.optim.AdamW(discriminator.parameters(), lr=config.discriminator_learning_rate, betas=(0.5, 0.9))
        if discriminator is not None
        else None
    )
    optimizers = {"optimizer": optimizer} | (
        {"discriminator_optimizer": disc_optimizer} if disc_optimizer else {}
    )

    # 2. Resume.
    start = 0
    checkpoint = _resolve_resume(resume_from, output)
    if checkpoint is not None:
        start = load_checkpoint(checkpoint, vae, optimizers, discriminator)
    if start >= config.max_steps:
        return TrainingResult(step=start, checkpoint=checkpoint)
    batches = _cycle(data)
    for _ in range(start):
        next(batches)

    # 3. Loop.
    result = TrainingResult(step=start, checkpoint=checkpoint)
    progress = tqdm(
        total=config.max_steps, initial=start, desc="transparent-vae", disable=not config.progress
    )
    for step in range(start + 1, config.max_steps + 1):
        rgba = next(batches).to(device)
        use_gan = discriminator is not None and step > config.adversarial_start_step
        losses = compute_losses(vae, rgba, config, discriminator if use_gan else None)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        logs = {name: float(value.detach()) for name, value in losses.terms.items()} | {
            "total": float(losses.total.detach())
        }
        if discriminator is not None and disc_optimizer is not None:
            disc_loss = hinge_discriminator_loss(
                discriminator(_frames(losses.target)),
                discriminator(_frames(losses.predicted.detach().clamp(0, 1))),
            )
            disc_optimizer.zero_grad(set_to_none=True)
            disc_loss.backward()
            disc_optimizer.step()
            logs["discriminator"] = float(disc_loss.detach())
        result.history.append(logs)
        result.step = step
        progress.update(1)
        progress.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k in ("alpha", "identity", "total")})
        if output is not None and (step % config.checkpoint_every == 0 or step == config.max_steps):
            result.checkpoint = save_checkpoint(output, step, vae, optimizers, discriminator, config)
            _prune(output, config.keep_checkpoints)
    progress.close()
    return result


def _cycle(data: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("train_transparent_vae: the data iterable yielded no batches")


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------
def _checkpoints(output: Path) -> list[tuple[int, Path]]:
    if not output.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in output.iterdir()
        if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()
    ]
    return sorted(found)


def _resolve_resume(resume_from: str | os.PathLike[str] | None, output: Path | None) -> Path | None:
    if resume_from is None:
        return None
    if resume_from == "latest":
        if output is None:
            raise ValueError('resume_from="latest" needs output_dir')
        found = _checkpoints(output)
        return found[-1][1] if found else None
    path = Path(resume_from)
    if not (path / STATE_JSON).is_file():
        raise FileNotFoundError(f"{path} is not a transparent-vae checkpoint (no {STATE_JSON})")
    return path


def _prune(output: Path, keep: int | None) -> None:
    if keep is None:
        return
    for _, path in _checkpoints(output)[:-keep]:
        shutil.rmtree(path)


def _optimizer_to_safetensors(
    name: str, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for param_id, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_safetensors(
    name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            param_id, item = key[len(prefix) :].split(".", 1)
            state.setdefault(int(param_id), {})[item] = value
    for key, value in meta["scalars"].items():
        param_id, item = key.split(".", 1)
        state.setdefault(int(param_id), {})[item] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    output: Path,
    step: int,
    vae: TransparentVAE,
    optimizers: Mapping[str, torch.optim.Optimizer],
    discriminator: PatchDiscriminator | None,
    config: TrainingConfig,
) -> Path:
    """Write ``output/checkpoint-<step>/`` atomically (a temporary folder renamed when complete)."""

    def fill(folder: Path) -> None:
        vae.encoder.save_pretrained(folder / "encoder")
        vae.decoder.save_pretrained(folder / "decoder")
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        meta: dict[str, Any] = {
            "step": step,
            "offset_gain": vae.offset_gain,
            "config": asdict(config),
            "optimizers": {},
        }
        for name, optimizer in optimizers.items():
            opt_tensors, opt_meta = _optimizer_to_safetensors(name, optimizer)
            tensors |= opt_tensors
            meta["optimizers"][name] = opt_meta
        save_file(tensors, str(folder / STATE_TENSORS), metadata={"format": "pt"})
        if discriminator is not None:
            weights = {k: v.detach().cpu().contiguous() for k, v in discriminator.state_dict().items()}
            save_file(weights, str(folder / DISCRIMINATOR_WEIGHTS), metadata={"format": "pt"})
        (folder / STATE_JSON).write_text(json.dumps(meta, indent=2) + "\n")

    return atomic_directory(output / f"checkpoint-{step:08d}", fill)


def load_checkpoint(
    checkpoint: str | os.PathLike[str],
    vae: TransparentVAE,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    discriminator: PatchDiscriminator | None = None,
) -> int:
    """Load a checkpoint's weights (and, if given, optimizer / discriminator state); returns its step."""
    folder = Path(checkpoint)
    meta = json.loads((folder / STATE_JSON).read_text())
    if meta["offset_gain"] != vae.offset_gain:
        raise ValueError(
            f"{folder} was trained with offset_gain={meta['offset_gain']}, the model has {vae.offset_gain}"
        )
    for name, module in (("encoder", vae.encoder), ("decoder", vae.decoder)):
        path = folder / name / "model.safetensors"
        load_checked_state_dict(module, load_file(str(path)), source=str(path))
    tensors = load_file(str(folder / STATE_TENSORS))
    for name, optimizer in (optimizers or {}).items():
        if name not in meta["optimizers"]:
            raise ValueError(f"{folder} has no state for {name!r} (it has {sorted(meta['optimizers'])})")
        optimizer.load_state_dict(_optimizer_from_safetensors(name, tensors, meta["optimizers"][name]))
    if discriminator is not None:
        path = folder / DISCRIMINATOR_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: the checkpoint was written without a discriminator")
        load_checked_state_dict(discriminator, load_file(str(path)), source=str(path))
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"])
