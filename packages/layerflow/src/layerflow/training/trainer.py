"""The accelerate training loop of one LayerFlow stage.

``accelerate`` is the distributed engine: one process (CPU or GPU), DDP (gloo on CPU, NCCL on GPUs),
FSDP2 or DeepSpeed ZeRO-2/3 (:mod:`.zero`) through an ``accelerate config`` (``configs/accelerate/``).
Checkpoints are written by every rank through ``torch.distributed.checkpoint`` (:mod:`.checkpointing`):
sharded states stay sharded, and a resume re-shards them to the processes and engine it has (under
DeepSpeed, :mod:`.zero` gathers the full weights and AdamW states into that same format and
partitions them back). The final export gathers full weights, so it is the same diffusers folder
whatever the engine. A launch whose processes are not the run that was
asked for is refused first (:mod:`.launch`). The loop itself steps the optimizer once per
``gradient_accumulation_steps`` micro-batches, skipping DDP's gradient sync on the others, clips
gradients, steps the LR schedule once per optimizer step (not once per process), updates the EMA,
logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    InitProcessGroupKwargs,
    ProjectConfiguration,
)
from diffusers.optimization import get_scheduler
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from layerflow.data import collate_cached, collate_for_layout
from layerflow.locking import folder_lock

from . import checkpointing as ckpt
from . import zero
from .config import ConfigError, TrainConfig, config_changes, config_json
from .datasets import EpochBatchSampler, RepeatedMix, build_cached_mix, build_layered_mix
from .ema import ParameterEMA
from .encoding import BatchEncoder, prompt_encoder
from .export import export_final, load_starting_point
from .interrupt import deferred_interrupt, ignore_interrupts
from .launch import check_launch
from .objective import Objective, masked_v_loss
from .output_dir import check_output_dir, clear_previous_run
from .stages import StagePlan, apply_stage, count_parameters, set_motion_gate

logger = logging.getLogger(__name__)
StepCallback = Callable[[int, float], None]
_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    """What a finished run reports: per-step global mean losses (1-based step ``i`` at index ``i-1``)."""

    losses: list[float]
    final_dir: Path | None
    trained_parameters: int
    samples_per_second: float


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class LayerFlowTrainer:
    """Trains one stage of the LayerFlow recipe as ``config`` says.

    Args:
        config: the validated stage config.
        resume: ``None``/``False``: start fresh; ``True``: the newest checkpoint of
            ``config.output_dir`` that reads completely (fresh when there is none); a path: that checkpoint.
        overwrite: a fresh run may replace the previous run in ``config.output_dir`` (without it, or
            ``resume``, a used output folder is refused before anything is loaded).
        allow_changes: resume although settings that shape training differ from the checkpoint's
            (:func:`~layerflow.training.config.config_changes`); without it such a resume is refused.
        on_step_end: called as ``fn(step, loss)`` after every optimizer step (and its checkpoint).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool | str | Path | None = None,
        overwrite: bool = False,
        allow_changes: bool = False,
        on_step_end: StepCallback | None = None,
    ):
        self.config = config
        self.resume = resume
        self.overwrite = overwrite
        self.allow_changes = allow_changes
        self._wrote_config = False
        self.on_step_end = on_step_end
        run = config.run
        tracker = run.tracker
        log_with = (
            "tensorboard"
            if tracker == "tensorboard" or (tracker == "auto" and tensorboard_available())
            else None
        )
        handlers: list[Any] = [DistributedDataParallelKwargs(find_unused_parameters=False)]
        deepspeed = zero.deepspeed_plugin(config) if zero.deepspeed_requested() else None
        if deepspeed is not None and not torch.cuda.is_available():
            # accelerate picks no backend for DeepSpeed on a CPU-only machine (each process would stay
            # alone); gloo makes the launched processes one group, as on GPUs.
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        self.accelerator = Accelerator(
            mixed_precision=run.mixed_precision,
            gradient_accumulation_steps=config.optim.gradient_accumulation_steps,
            deepspeed_plugin=deepspeed,
            log_with=log_with,
            project_config=ProjectConfiguration(
                project_dir=str(config.output_dir), logging_dir=str(config.output_dir / "logs")
            ),
            kwargs_handlers=handlers,
        )
        check_launch(self.accelerator)
        self.deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        if run.mixed_precision == "fp16" and self.accelerator.device.type == "cpu":
            raise ConfigError("run.mixed_precision='fp16' needs a CUDA device; on the CPU use 'bf16' or 'no'")
        self.weight_dtype = _DTYPES[run.mixed_precision]
        if run.num_threads is not None:
            torch.set_num_threads(run.num_threads)

    # ------------------------------------------------------------------------------ setup
    @property
    def frozen_encoders(self) -> list[torch.nn.Module]:
        """The VAE, the text encoder and (``latent_offset`` layouts) the transparent VAE."""
        encoders = [self.pipeline.vae, self.pipeline.text_encoder, self.pipeline.transparent_vae]
        return [module for module in encoders if module is not None]

    def _setup_model(self) -> None:
        config, accelerator = self.config, self.accelerator
        self.pipeline = load_starting_point(config)
        transformer = self.pipeline.transformer
        self.plan = StagePlan.from_config(config, transformer)
        # What the stage adds (a LoRA's random factors) is drawn from the run's seed, not from whatever
        # the process's RNG holds: the same in every run and every process of one run.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.run.seed)
            self.trained = apply_stage(transformer, config, self.plan)
        self.names = sorted(self.trained)
        if config.model.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        device = accelerator.device
        # The frozen encoders run in the compute dtype (as diffusers' trainers do); the transformer
        # keeps its loaded precision (float32) and computes under accelerate's autocast, so the
        # frozen base weights it exports are never rounded.
        for module in self.frozen_encoders:
            module.requires_grad_(False).eval()
            place(module, device, self.weight_dtype)
        place(transformer, device, torch.float32)
        self.codec = self.pipeline.codec
        data = config.data
        try:  # the clip size must survive the VAE and the patch size: say so before any data is read
            self.codec.geometry.check(data.num_frames, data.height, data.width, self.codec.layout)
        except ValueError as error:  # its messages start with the argument, named as the data.* key
            raise ConfigError(f"data.{error}") from None
        self.objective = Objective(
            self.pipeline.scheduler,
            self.pipeline.layer_layout,
            config.objective.tasks,
            task_mixing=config.objective.task_mixing,
            text_dropout=config.objective.text_dropout,
            tokens_per_prompt=self.codec.geometry.text_tokens_per_prompt,
            seed=config.run.seed,
            first_frame_noise=config.objective.first_frame_noise,
        )
        optim = config.optim
        optimizer = torch.optim.AdamW(
            [self.trained[name] for name in self.names],
            lr=config.learning_rate,
            betas=(optim.adam_beta1, optim.adam_beta2),
            eps=optim.adam_epsilon,
            weight_decay=optim.weight_decay,
        )
        self.lr_scheduler = get_scheduler(
            optim.lr_scheduler,
            optimizer,
            num_warmup_steps=optim.lr_warmup_steps,
            num_training_steps=config.run.max_steps,
        )
        self.model, self.optimizer = self._prepare(transformer, optimizer)
        self.transformer = transformer
        # A sharding engine replaces the parameters (FSDP2: DTensor shards): train and save the new ones.
        parameters = dict(transformer.named_parameters())
        self.trained = {name: parameters[name] for name in self.names}
        self.ema = (
            ParameterEMA(self._ema_values(), config.run.ema_decay)
            if config.run.ema_decay is not None
            else None
        )

    def _ema_values(self) -> Mapping[str, torch.Tensor]:
        """What the EMA follows: the trained parameters (this rank's shards under FSDP2), or under
        DeepSpeed their gathered float32 values (a ZeRO-3 parameter holds only its partition)."""
        return zero.full_fp32(self.trained) if self.deepspeed else self.trained

    def _prepare(
        self, transformer: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.nn.Module, Any]:
        """Wrap model and optimizer for the engine accelerate runs (DDP, FSDP2, DeepSpeed). The LR
        schedule is not handed over: the loop steps it once per optimizer step under every engine."""
        return self.accelerator.prepare(transformer, optimizer)

    def _setup_data(self) -> None:
        config, accelerator = self.config, self.accelerator
        tokens = self.codec.geometry.text_tokens_per_prompt
        text_encoder = prompt_encoder(self.pipeline, tokens)
        progress = config.run.progress and accelerator.is_main_process
        layout = self.pipeline.layer_layout
        with accelerator.main_process_first():
            if config.data.precompute:
                self.dataset: RepeatedMix = build_cached_mix(
                    config, self.codec, text_encoder, progress=progress
                )
            else:
                self.dataset = build_layered_mix(config, progress=progress)[0]
        if config.data.precompute:  # encoders are not needed any more: free the accelerator for training
            for module in self.frozen_encoders:
                module.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.collate = (
            collate_cached if config.data.precompute else partial(collate_for_layout, layout=layout)
        )
        self.sampler = EpochBatchSampler(
            len(self.dataset),
            config.optim.batch_size,
            world_size=accelerator.num_processes,
            rank=accelerator.process_index,
            seed=config.run.seed,
        )
        self.encoder = BatchEncoder(
            self.codec,
            text_encoder=text_encoder,
            seed=config.run.seed,
            device=accelerator.device,
            dtype=self.weight_dtype,
        )

    def _batches(self, state: ckpt.TrainingState) -> Iterator[Any]:
        """Micro-batches from the saved position on, across epochs; ``state`` tracks the position."""
        while True:
            self.dataset.set_epoch(state.epoch)
            self.sampler.set_position(state.epoch, state.batch_in_epoch)
            loader = DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                collate_fn=self.collate,
                num_workers=self.config.data.num_workers,
                worker_init_fn=ignore_interrupts,  # Ctrl-C stops the run between steps, not its workers
            )
            for batch in loader:
                state.batch_in_epoch += 1
                if state.batch_in_epoch == self.sampler.batches_per_epoch:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                yield batch

    # ---------------------------------------------------------------------------- checkpoints
    def _checkpoint_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The tensors our format holds and the optimizer's JSON-able rest (collective); under DeepSpeed
        the full float32 weights and AdamW states, gathered from its partitions."""
        if self.deepspeed:
            tensors, optimizer_meta = zero.checkpoint_tensors(self.model, self.trained)
            if self.ema is not None:
                tensors |= {f"ema.{name}": shadow for name, shadow in self.ema.shadow.items()}
            return tensors, optimizer_meta
        return ckpt.checkpoint_tensors(
            self.model,
            self.optimizer.optimizer,
            self.trained,
            self.ema.shadow if self.ema is not None else None,
        )

    def _save(self, state: ckpt.TrainingState) -> Path:
        """Write checkpoint ``state.step`` with every rank (each its own shards)."""
        accelerator = self.accelerator
        tensors, optimizer_meta = self._checkpoint_tensors()
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        record = {
            "stage": self.config.stage,
            "step": state.step,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "losses": state.losses,
            "world_size": accelerator.num_processes,
            "distributed_type": accelerator.distributed_type.value,
            "trained_parameters": self.names,
            "optimizer": optimizer_meta,
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "grad_scaler": scaler,
            "ema_updates": self.ema.num_updates if self.ema is not None else None,
            "rng": ckpt.python_rng_state(),
            "config": self.config.to_dict(),
            "dataset_size": len(self.dataset),
        }
        return ckpt.write_checkpoint(
            self.config.output_dir,
            state.step,
            tensors,
            record,
            self.config.run.keep_checkpoints,
        )

    def _check_start(self) -> None:
        """Before anything loads: the output folder is free (or resumed/overwritten), the checkpoint exists."""
        check_output_dir(self.config.output_dir, resume=bool(self.resume), overwrite=self.overwrite)
        if self.resume not in (None, False, True) and not Path(self.resume).is_dir():  # type: ignore[arg-type]
            raise ckpt.CheckpointError(f"--resume {self.resume}: no such checkpoint folder")

    def _restore(self) -> ckpt.TrainingState:
        """The state to start from: fresh, the newest checkpoint that reads completely, or the given one."""
        output_dir = self.config.output_dir
        if self.resume is None or self.resume is False:
            return ckpt.TrainingState()
        if self.resume is True:
            found = ckpt.newest_readable_checkpoint(output_dir)
            return ckpt.TrainingState() if found is None else self._load(found)
        path = Path(self.resume)
        step = ckpt.check_readable(path)["step"]
        newer = [p.name for p in ckpt.complete_checkpoints(output_dir) if ckpt.checkpoint_step(p) > step]
        if newer:
            raise ckpt.CheckpointError(
                f"--resume {path}: {output_dir} has newer checkpoints {newer}; continuing from step "
                f"{step} would mix two runs there: move them away, or resume from the newest"
            )
        return self._load(path)

    def _load(self, path: Path) -> ckpt.TrainingState:
        """Load checkpoint ``path`` into this run (every rank its own shards, re-sharded as needed)."""
        state = ckpt.read_state(path)
        if state["stage"] != self.config.stage:
            raise ckpt.CheckpointError(
                f"{path} is a stage-{state['stage']} checkpoint; this is stage {self.config.stage}"
            )
        if state["trained_parameters"] != self.names:
            raise ckpt.CheckpointError(f"{path} trained other parameters than this config trains")
        changes = config_changes(state["config"], self.config.to_dict())
        if state.get("dataset_size", len(self.dataset)) != len(self.dataset):
            changes.append(f"dataset size: {state['dataset_size']} -> {len(self.dataset)} samples")
        if changes and not self.allow_changes:
            raise ckpt.CheckpointError(
                f"{path} was trained with other settings ({'; '.join(changes)}): pass --allow-changes "
                "to resume with these"
            )
        if changes:
            logger.warning("resuming %s with changed settings: %s", path, "; ".join(changes))
        if state["world_size"] * self.config.optim.batch_size != self.sampler.global_batch:
            logger.warning(
                "resuming with a different global batch: the data order will differ from the original run"
            )
        if self.ema is not None and state["ema_updates"] is None:
            raise ckpt.CheckpointError(f"{path} has no EMA state, but run.ema_decay is set")
        if self.deepspeed:  # full tensors on every rank, partitioned into the engine
            tensors = zero.checkpoint_destination(self.trained)
            if self.ema is not None:
                tensors |= {f"ema.{name}": shadow for name, shadow in self.ema.shadow.items()}
            ckpt.load_tensors(path, tensors)
            zero.load_checkpoint_tensors(self.model, self.trained, tensors, state["optimizer"])
        else:
            tensors, _ = self._checkpoint_tensors()
            ckpt.load_tensors(path, tensors)
            ckpt.load_optimizer(self.model, self.optimizer.optimizer, tensors, state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if state["grad_scaler"] is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["grad_scaler"])
        if self.ema is not None:
            self.ema.num_updates = int(state["ema_updates"])
        rng = ckpt.read_rng(path, self.accelerator.process_index)
        if rng:
            ckpt.restore_rng(rng, state["rng"])
        return ckpt.TrainingState(
            state["step"], state["epoch"], state["batch_in_epoch"], list(state["losses"])
        )

    # ------------------------------------------------------------------------------ training
    def _micro_step(self, batch: Any, step: int, micro_step: int) -> torch.Tensor:
        accelerator, config = self.accelerator, self.config
        local = config.optim.batch_size
        positions = [accelerator.process_index * local + i for i in range(local)]
        draws = self.objective.draw(step, micro_step, positions)
        model_batch = self.encoder(batch, step, micro_step, positions, draws)
        noised = self.objective.noise(model_batch, step, micro_step, positions, draws)
        set_motion_gate(self.transformer, model_batch.is_static)
        prediction = self.model(
            noised.model_input,
            noised.text,
            noised.timesteps,
            num_clips=noised.num_clips,
            return_dict=False,
        )[0]
        return masked_v_loss(prediction, noised.target, noised.loss_mask)

    def train(self) -> TrainResult:
        """Train under the lock of the output root (``run.output_dir`` when set), taken by the main
        process: a second training into the same root fails at once instead of mixing two runs."""
        run = self.config.run
        root = Path(run.output_dir or run.output_root)
        with folder_lock(root) if self.accelerator.is_main_process else contextlib.nullcontext():
            try:
                return self._train()
            except BaseException:
                self._forget_unstarted_run()
                raise

    def _forget_unstarted_run(self) -> None:
        """After a failure before the first checkpoint, remove the ``config.json`` this run wrote:
        it would make the rerun refuse the folder as a previous run with nothing to resume."""
        output_dir = self.config.output_dir
        if self._wrote_config and not ckpt.complete_checkpoints(output_dir):
            (output_dir / "config.json").unlink(missing_ok=True)

    def _train(self) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        self._check_start()
        self._setup_model()
        self._setup_data()
        state = self._restore()
        if accelerator.is_main_process:
            ckpt.remove_stale_temporaries(config.output_dir)
            if self.overwrite:
                clear_previous_run(config.output_dir)
            logger.info(
                "stage %d: training %d parameters (%d tensors) on blocks %s, %d samples, global batch %d",
                config.stage, count_parameters(self.trained), len(self.names), list(self.plan.blocks),
                len(self.dataset), self.sampler.global_batch * config.optim.gradient_accumulation_steps,
            )  # fmt: skip
            (config.output_dir).mkdir(parents=True, exist_ok=True)
            if state.step == 0:  # a resumed run keeps the config its first steps were trained with
                (config.output_dir / "config.json").write_text(config_json(config))
                self._wrote_config = True
        accelerator.init_trackers(f"layerflow-stage{config.stage}", config=_flat_scalars(config.to_dict()))
        accumulation = config.optim.gradient_accumulation_steps
        samples_per_step = self.sampler.global_batch * accumulation
        batches = self._batches(state)
        progress = tqdm(
            total=config.run.max_steps,
            initial=state.step,
            desc=f"stage {config.stage}",
            disable=not (config.run.progress and accelerator.is_main_process),
        )
        started, first_step = time.perf_counter(), state.step
        with deferred_interrupt() as stop_requested:
            self._steps(state, batches, progress, stop_requested)
        progress.close()
        elapsed = time.perf_counter() - started
        rate = samples_per_step * (state.step - first_step) / max(elapsed, 1e-9)
        final = self._export(state)
        accelerator.end_training()
        return TrainResult(state.losses, final, count_parameters(self.trained), rate)

    def _steps(
        self,
        state: ckpt.TrainingState,
        batches: Iterator[Any],
        progress: Any,
        stop_requested: Callable[[], bool],
    ) -> None:
        """The optimisation steps up to ``max_steps``, checkpointing every ``checkpoint_every``; a
        requested stop (Ctrl-C, :func:`deferred_interrupt`) ends them after a whole step."""
        config, accelerator = self.config, self.accelerator
        accumulation = config.optim.gradient_accumulation_steps
        samples_per_step = self.sampler.global_batch * accumulation
        while state.step < config.run.max_steps:
            step_start = time.perf_counter()
            losses = []
            for micro_step in range(accumulation):
                batch = next(batches)
                # accelerate syncs (DDP) and steps the engine (DeepSpeed) on the last micro-batch only;
                # backward scales the loss by 1 / accumulation under every engine.
                with accelerator.accumulate(self.model):
                    loss = self._micro_step(batch, state.step, micro_step)
                    accelerator.backward(loss)
                losses.append(loss.detach())
            if config.optim.max_grad_norm is not None:
                accelerator.clip_grad_norm_(self.model.parameters(), config.optim.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self._ema_values())
            loss_value = float(accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item())
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"stage {config.stage}: loss is {loss_value} at step {state.step + 1}"
                )
            state.step += 1
            state.losses.append(loss_value)
            throughput = samples_per_step / max(time.perf_counter() - step_start, 1e-9)
            progress.update()
            progress.set_postfix(loss=f"{loss_value:.4f}", samples_per_s=f"{throughput:.1f}")
            if state.step % config.run.log_every == 0:
                lr = self.lr_scheduler.get_last_lr()[0]
                accelerator.log({"loss": loss_value, "lr": lr, "samples_per_s": throughput}, step=state.step)
            if state.step % config.run.checkpoint_every == 0 or state.step == config.run.max_steps:
                self._save(state)
            if self.on_step_end is not None:
                self.on_step_end(state.step, loss_value)
            if stop_requested():
                raise KeyboardInterrupt

    def _export(self, state: ckpt.TrainingState) -> Path | None:
        """Write ``final/`` from the full weights (gathered from every rank where they are sharded)."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        trained, gathered = self._final_weights()
        final = None
        if accelerator.is_main_process:
            transformer = self._unsharded_transformer(trained) if gathered else self.transformer
            summary = {
                "stage": self.config.stage,
                "steps": state.step,
                "losses": state.losses,
                "trained_blocks": list(self.plan.blocks),
                "trained_parameters": count_parameters(self.trained),
                "ema": self.ema is not None,
                "config": self.config.to_dict(),
            }
            final = export_final(self.config, transformer, trained, summary)
            logger.info("stage %d finished: %s", self.config.stage, final)
        accelerator.wait_for_everyone()
        return final

    def _final_weights(self) -> tuple[dict[str, torch.Tensor], bool]:
        """The trained weights to export (the EMA's where there is one) and whether they were gathered
        from a sharding engine (collective then; only the main process's are complete)."""
        if self.deepspeed:
            return (dict(self.ema.shadow) if self.ema is not None else zero.full_fp32(self.trained)), True
        if self.ema is not None:
            self.ema.copy_to(self.trained)
        if not any(isinstance(p, DTensor) for p in self.trained.values()):
            return dict(self.trained), False
        full: dict[str, Any] = get_model_state_dict(  # collective: rank 0 gets the full tensors
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return ({name: full[name] for name in self.names} if full else {}), True

    def _unsharded_transformer(self, trained: Mapping[str, torch.Tensor]) -> torch.nn.Module:
        """The stage's transformer (starting point, this stage's adapters) holding the gathered trained
        weights; the frozen ones are the starting point's, which no engine changes or rounds."""
        transformer = load_starting_point(self.config).transformer
        apply_stage(transformer, self.config, self.plan)
        missing, unexpected = transformer.load_state_dict(dict(trained), strict=False)
        if unexpected or set(self.names) & set(missing):
            raise RuntimeError(
                f"gathered weights do not fit the stage's transformer: {unexpected or missing}"
            )
        return transformer


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move ``module`` to ``device`` and cast it to ``dtype`` only where it is not already (no needless casts)."""
    module.to(device)
    if any(p.dtype != dtype for p in module.parameters()):
        module.to(dtype=dtype)


def _flat_scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Config values a tracker accepts (numbers, strings, bools), flattened to ``section.key``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= _flat_scalars(value, f"{name}.")
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
    return flat


def train(
    config: TrainConfig,
    *,
    resume: bool | str | Path | None = None,
    overwrite: bool = False,
    allow_changes: bool = False,
    on_step_end: StepCallback | None = None,
) -> TrainResult:
    """Train one stage; see :class:`LayerFlowTrainer`."""
    return LayerFlowTrainer(
        config, resume=resume, overwrite=overwrite, allow_changes=allow_changes, on_step_end=on_step_end
    ).train()
