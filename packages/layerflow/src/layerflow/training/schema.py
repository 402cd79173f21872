"""The training configuration's schema: one dataclass per table, each with its own checks.

Filled and checked by :func:`layerflow.training.config.load_config` (files, stage tables, overrides);
the data source kinds are checked against :data:`layerflow.training.sources.SOURCE_KINDS` there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from layerflow.layout import TASKS, AlphaRepresentation, LayerLayout, LayerSpec, VaePass
from layerflow.models.adapters import ATTENTION_PROJECTIONS
from layerflow.stage_output import StageOutput

Stage = Literal[1, 2, 3]
STAGES: tuple[int, ...] = (1, 2, 3)
MixedPrecision = Literal["no", "fp16", "bf16"]
TaskMixing = Literal["per_batch", "per_sample"]
InitFrom = Literal["previous_stage", "base"]
Tracker = Literal["auto", "tensorboard", "none"]

#: The paper's learning rates: layer-aware model, motion LoRA, content LoRA.
STAGE_LEARNING_RATES: dict[int, float] = {1: 1e-4, 2: 1e-3, 3: 5e-3}


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range; names the dotted key."""


@dataclass
class LayoutConfig:
    """``model.layout``, in the form of ``model_index.json``'s ``layout`` entry.

    Example: ``layout = { alpha = "alpha_clip", layers = [{ name = "fg1", role = "foreground" },
    { name = "fg2", role = "foreground" }, { name = "bg", role = "background" },
    { name = "blend", role = "composite" }] }`` (foregrounds front to back, as data samples list them).
    ``vae_pass`` is how clips go through the VAE (``"per_clip"``, or ``"joint"`` as the official
    code); the precompute cache and the on-the-fly encoder follow it, as the pipeline does.
    """

    layers: list[LayerSpec]
    alpha: AlphaRepresentation = "alpha_clip"
    vae_pass: VaePass = "per_clip"

    def to_layout(self, prefix: str) -> LayerLayout:
        """The :class:`LayerLayout`; an invalid one raises :class:`ConfigError` naming ``prefix``."""
        try:
            return LayerLayout(tuple(self.layers), self.alpha, vae_pass=self.vae_pass)
        except ValueError as error:
            raise ConfigError(f"{prefix}: {error}") from None


@dataclass
class ModelConfig:
    """Which model is trained and what of it trains.

    Args:
        base: ``"tiny"`` (the download-free tiny pipeline of :mod:`layerflow.tiny`), a saved
            ``LayerFlowPipeline`` folder, or a stock CogVideoX-2B diffusers folder.
        init_from: stages 2 and 3 start from the previous stage's output (``"previous_stage"``) or
            from ``base`` (``"base"``, an explicit choice: the motion LoRA is then absent in stage 3).
        previous_stage_dir: the previous stage's output folder; default ``<output_root>/stage{N-1}``.
        block_interval: LoRAs and stage-1 training use every ``block_interval``-th block counted back
            from the last (30 blocks, 6: blocks 5, 11, 17, 23, 29 as in the official filters).
        stage1_trains: ``"blocks"``: stage 1 trains the ``block_interval`` blocks and the layer
            embedder, the paper's recipe on a pretrained CogVideoX; ``"all"``: the whole transformer,
            for a base that starts from random weights (``base = "tiny"``, the demo), whose patch,
            time and output layers would otherwise stay random.
        train_layer_embedder: also train the layer embedder (stage 1 default; the official ``_txt``
            variants train it in the LoRA stages too).
        motion_rank, content_rank, lora_alpha: LoRA ranks and alpha (scaling ``alpha / rank``).
        lora_targets: Linear modules of each chosen block that get LoRAs (official: q, k, v, out).
        gradient_checkpointing: recompute block activations in backward.
        tiny_seed, tiny_num_layers: seed and depth of the ``"tiny"`` base model.
        layout: the layer layout trained (:class:`LayoutConfig`); default: the base model's own
            (a saved pipeline's, else :meth:`LayerLayout.official`). A saved pipeline whose layout
            differs is an error, never silently overridden.
        transparent_vae: a saved ``LayerFlowTransparentVAE`` folder (``save_pretrained``), for a
            ``latent_offset`` layout on a base that has none (the tiny base builds a tiny one).
    """

    base: str = "tiny"
    layout: LayoutConfig | None = None
    transparent_vae: str | None = None
    init_from: InitFrom = "previous_stage"
    previous_stage_dir: str | None = None
    block_interval: int = 6
    stage1_trains: Literal["blocks", "all"] = "blocks"
    train_layer_embedder: bool | None = None
    motion_rank: int = 8
    content_rank: int = 256
    lora_alpha: float = 1.0
    lora_targets: list[str] = field(default_factory=lambda: list(ATTENTION_PROJECTIONS))
    gradient_checkpointing: bool = True
    tiny_seed: int = 0
    tiny_num_layers: int = 3

    def validate(self, prefix: str) -> None:
        check_positive(f"{prefix}.block_interval", self.block_interval)
        check_choice(f"{prefix}.stage1_trains", self.stage1_trains, ("blocks", "all"))
        check_positive(f"{prefix}.tiny_num_layers", self.tiny_num_layers)
        check_positive(f"{prefix}.motion_rank", self.motion_rank)
        check_positive(f"{prefix}.content_rank", self.content_rank)
        if self.lora_alpha <= 0:
            raise ConfigError(f"{prefix}.lora_alpha must be > 0, got {self.lora_alpha}")
        if not self.lora_targets:
            raise ConfigError(f"{prefix}.lora_targets must name at least one Linear module")
        if self.layout is not None:
            self.layout.to_layout(f"{prefix}.layout")


@dataclass
class SourceConfig:
    """One dataset of the mix; the kinds and their required keys are declared once, in
    :data:`~layerflow.training.sources.SOURCE_KINDS`.

    Args:
        kind: ``"synthetic"`` (embedded procedural data, generated once into ``data.synthetic_dir``),
            ``"simple"`` (the project's layout), ``"official"`` (LayerFlow's DAVIS/YoutubeVOS layout),
            ``"static_images"`` (layered images as static clips), ``"copy_paste"`` (foreground clips
            pasted on background clips).
        root: dataset folder (``simple``, ``official``, ``static_images``).
        meta_file: official layout meta JSON (default: found in ``root``).
        foreground_clips, background_clips: ``copy_paste`` clip folders.
        foregrounds: ``synthetic``, ``copy_paste``: foreground layers per sample (composited front to
            back with exact alphas, one prompt each).
        num_samples: ``synthetic``: clips generated; ``copy_paste``: samples per epoch.
        freeze: freeze every clip to one random frame repeated (source ``"static"``, motion gate 1):
            LayerFlow's static videos for the motion LoRA.
        repeat: how many times the source appears per epoch (integer mixing weight).
    """

    kind: str = "synthetic"
    root: str | None = None
    meta_file: str | None = None
    foreground_clips: str | None = None
    background_clips: str | None = None
    foregrounds: int = 1
    num_samples: int | None = None
    freeze: bool = False
    repeat: int = 1

    def validate(self, prefix: str) -> None:
        """The kind-independent checks; :func:`~layerflow.training.sources.check_source_kinds` checks
        ``kind`` and the keys it requires (the kinds are declared there)."""
        check_positive(f"{prefix}.repeat", self.repeat)
        check_positive(f"{prefix}.foregrounds", self.foregrounds)
        if self.num_samples is not None:
            check_positive(f"{prefix}.num_samples", self.num_samples)


@dataclass
class DataConfig:
    """Training data: sources, preprocessing, cache.

    Args:
        sources: the datasets mixed into one epoch (default: the embedded synthetic clips).
        height, width, num_frames, stride: preprocessing (resize + center crop, frame window).
        on_error: ``"raise"`` on a bad sample, or ``"skip"`` it (reported with its id).
        precompute: encode latents and text once into ``cache_dir`` and train from the cache;
            ``False`` encodes with the VAE and text encoder every step.
        cache_dir: cache folder (default ``<output_dir>/cache``), one sub-folder per source.
        synthetic_dir: where ``synthetic`` sources are generated (default ``<output_root>/embedded-data``).
        num_workers: DataLoader worker processes.
    """

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    height: int = 480
    width: int = 720
    num_frames: int = 16
    stride: int = 1
    on_error: Literal["raise", "skip"] = "raise"
    precompute: bool = False
    cache_dir: str | None = None
    synthetic_dir: str | None = None
    synthetic_seed: int = 0
    num_workers: int = 0

    def validate(self, prefix: str) -> None:
        if not self.sources:
            raise ConfigError(f"{prefix}.sources must list at least one dataset")
        for index, source in enumerate(self.sources):
            source.validate(f"{prefix}.sources[{index}]")
        for key in ("height", "width", "num_frames", "stride"):
            check_positive(f"{prefix}.{key}", getattr(self, key))
        check_choice(f"{prefix}.on_error", self.on_error, ("raise", "skip"))
        if self.num_workers < 0:
            raise ConfigError(f"{prefix}.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class OptimConfig:
    """Adam, the LR schedule and the batch.

    Args:
        learning_rate: default per stage (1e-4 / 1e-3 / 5e-3, the paper's).
        weight_decay: decoupled (``torch.optim.AdamW``); the default 0 is the paper's plain Adam.
        batch_size: samples per device per micro-batch; the global batch is
            ``batch_size * num_processes * gradient_accumulation_steps``.
        lr_scheduler: any ``diffusers.optimization.get_scheduler`` name.
    """

    learning_rate: float | None = None
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 0
    batch_size: int = 1
    gradient_accumulation_steps: int = 1

    def validate(self, prefix: str) -> None:
        from diffusers.optimization import SchedulerType

        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ConfigError(f"{prefix}.learning_rate must be > 0, got {self.learning_rate}")
        for key in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{prefix}.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"{prefix}.max_grad_norm must be > 0 (or absent), got {self.max_grad_norm}")
        check_choice(f"{prefix}.lr_scheduler", self.lr_scheduler, tuple(s.value for s in SchedulerType))
        if self.lr_warmup_steps < 0:
            raise ConfigError(f"{prefix}.lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        check_positive(f"{prefix}.batch_size", self.batch_size)
        check_positive(f"{prefix}.gradient_accumulation_steps", self.gradient_accumulation_steps)


@dataclass
class ObjectiveConfig:
    """What the loss sees.

    Args:
        tasks: task -> probability (normalised); tasks of probability 0 are never drawn.
        task_mixing: ``"per_batch"``: one task per micro-batch (all samples share it);
            ``"per_sample"``: each sample draws its own task (needs tasks with equal prompt counts,
            so ``decompose``, which has no composite prompt, cannot be mixed per sample with others).
        text_dropout: probability that one layer prompt of one sample is replaced by the
            unconditional (all-zero) embedding the pipeline's CFG uses.
    """

    tasks: dict[str, float] = field(
        default_factory=lambda: {
            "generate": 0.25,
            "foreground_to_background": 0.25,
            "background_to_foreground": 0.25,
            "decompose": 0.25,
        }
    )
    task_mixing: TaskMixing = "per_batch"
    text_dropout: float = 0.1

    def validate(self, prefix: str) -> None:
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ConfigError(f"{prefix}.tasks has unknown task(s) {unknown}; tasks are {list(TASKS)}")
        for task, weight in self.tasks.items():
            if not isinstance(weight, (int, float)) or weight < 0:
                raise ConfigError(f"{prefix}.tasks.{task} must be a probability >= 0, got {weight!r}")
        if sum(self.tasks.values()) <= 0:
            raise ConfigError(f"{prefix}.tasks needs at least one task with probability > 0")
        check_choice(f"{prefix}.task_mixing", self.task_mixing, get_args(TaskMixing))
        if self.task_mixing == "per_sample":
            drawn = [t for t, w in self.tasks.items() if w > 0]
            if "decompose" in drawn and len(drawn) > 1:
                raise ConfigError(
                    f"{prefix}.task_mixing='per_sample' cannot mix 'decompose' (no composite prompt) with "
                    f"{[t for t in drawn if t != 'decompose']} (a prompt per layer) in one batch; use 'per_batch'"
                )
        if not 0.0 <= self.text_dropout < 1.0:
            raise ConfigError(f"{prefix}.text_dropout must be in [0, 1), got {self.text_dropout}")


@dataclass
class RunConfig:
    """Length, precision, checkpoints, logging.

    Args:
        output_root: stage outputs go to ``<output_root>/stage{N}/`` (``output_dir`` overrides).
        checkpoint_every: write a resumable checkpoint every N steps (and always at the end).
        keep_checkpoints: how many of the newest checkpoints to keep (``None``: all).
        ema_decay: keep an EMA of the trained parameters (``None``: off); the final export uses it.
        num_threads: ``torch.set_num_threads`` for CPU runs (tiny models are fastest on one thread).
    """

    max_steps: int = 1000
    seed: int = 0
    mixed_precision: MixedPrecision = "no"
    output_root: str = "outputs/train"
    output_dir: str | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int | None = 3
    log_every: int = 1
    tracker: Tracker = "auto"
    ema_decay: float | None = None
    progress: bool = True
    num_threads: int | None = None

    def validate(self, prefix: str) -> None:
        check_positive(f"{prefix}.max_steps", self.max_steps)
        check_positive(f"{prefix}.checkpoint_every", self.checkpoint_every)
        check_positive(f"{prefix}.log_every", self.log_every)
        if self.keep_checkpoints is not None:
            check_positive(f"{prefix}.keep_checkpoints", self.keep_checkpoints)
        check_choice(f"{prefix}.mixed_precision", self.mixed_precision, get_args(MixedPrecision))
        check_choice(f"{prefix}.tracker", self.tracker, get_args(Tracker))
        if self.num_threads is not None:
            check_positive(f"{prefix}.num_threads", self.num_threads)
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"{prefix}.ema_decay must be in (0, 1), got {self.ema_decay}")


@dataclass
class TrainConfig:
    """One stage's complete configuration."""

    stage: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> TrainConfig:
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}")
        for name in ("model", "data", "optim", "objective", "run"):
            getattr(self, name).validate(name)
        return self

    # -- stage-dependent values, resolved in one place -------------------------------------------
    @property
    def learning_rate(self) -> float:
        return (
            self.optim.learning_rate
            if self.optim.learning_rate is not None
            else STAGE_LEARNING_RATES[self.stage]
        )

    @property
    def train_layer_embedder(self) -> bool:
        explicit = self.model.train_layer_embedder
        return explicit if explicit is not None else self.stage == 1

    @property
    def output_dir(self) -> Path:
        return (
            Path(self.run.output_dir)
            if self.run.output_dir
            else StageOutput.of(self.run.output_root, self.stage).root
        )

    @property
    def previous_stage_dir(self) -> Path:
        if self.model.previous_stage_dir:
            return Path(self.model.previous_stage_dir)
        return StageOutput.of(self.run.output_root, self.stage - 1).root

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_dir) if self.data.cache_dir else self.output_dir / "cache"

    @property
    def synthetic_dir(self) -> Path:
        if self.data.synthetic_dir:
            return Path(self.data.synthetic_dir)
        return Path(self.run.output_root) / "embedded-data"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value}")


def check_choice(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")
