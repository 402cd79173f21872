"""The training configuration's schema: one dataclass per table, each with its own checks.

Filled and checked by :func:`layerflow.training.config.load_config` (files, stage tables, overrides);
the data source kinds are checked against :data:`layerflow.training.sources.SOURCE_KINDS` there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from layerflow.layout import (
    ALL_TASKS,
    FIRST_FRAME_TASKS,
    AlphaRepresentation,
    LayerLayout,
    LayerSpec,
    VaePass,
)
from layerflow.models.adapters import ATTENTION_PROJECTIONS
from layerflow.stage_output import StageOutput
from layerflow.tasks import LIMITS

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


@dataclass(frozen=True)
class Bound:
    """The range a numeric setting must lie in, declared once on its field (:func:`bounded`) and
    checked with the whole config before any model loads: past it a run fails late or never ends."""

    low: int | float
    high: int | float
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: int | float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def __str__(self) -> str:
        low, high = (str(end) if isinstance(end, int) else f"{end:g}" for end in (self.low, self.high))
        return f"{'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"


def bounded(
    default: Any, low: int | float, high: int | float, *, open_low: bool = False, open_high: bool = False
) -> Any:
    """A dataclass field whose value (when not ``None``) must lie in ``[low, high]`` (ends opened on request)."""
    return field(default=default, metadata={"bound": Bound(low, high, open_low, open_high)})


def check_bounds(section: Any, prefix: str) -> None:
    """Every :func:`bounded` field of a config table lies in its range; one line naming key and range."""
    for item in dataclasses.fields(section):
        bound, value = item.metadata.get("bound"), getattr(section, item.name)
        if bound is not None and value is not None and value not in bound:
            raise ConfigError(f"{prefix}.{item.name} must be in {bound}, got {value!r}")


#: Seeds: numpy's ``SeedSequence`` takes non-negative integers, TOML integers end at 2**63 - 1.
MAX_SEED = 2**63 - 1
#: Steps of one run, and anything counted in steps (checkpoint, log and warm-up intervals).
MAX_STEPS = 10_000_000


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
    block_interval: int = bounded(6, 1, 1024)
    stage1_trains: Literal["blocks", "all"] = "blocks"
    train_layer_embedder: bool | None = None
    motion_rank: int = bounded(8, 1, 4096)
    content_rank: int = bounded(256, 1, 4096)
    lora_alpha: float = bounded(1.0, 0, 65536, open_low=True)
    lora_targets: list[str] = field(default_factory=lambda: list(ATTENTION_PROJECTIONS))
    gradient_checkpointing: bool = True
    tiny_seed: int = bounded(0, 0, MAX_SEED)
    tiny_num_layers: int = bounded(3, 1, 64)

    def validate(self, prefix: str) -> None:
        check_bounds(self, prefix)
        check_choice(f"{prefix}.stage1_trains", self.stage1_trains, ("blocks", "all"))
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
    foregrounds: int = bounded(1, 1, 64)
    num_samples: int | None = bounded(None, 1, 10_000_000)
    freeze: bool = False
    repeat: int = bounded(1, 1, 10_000)

    def validate(self, prefix: str) -> None:
        """The kind-independent checks; :func:`~layerflow.training.sources.check_source_kinds` checks
        ``kind`` and the keys it requires (the kinds are declared there)."""
        check_bounds(self, prefix)


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
    height: int = bounded(480, 1, LIMITS["height"])
    width: int = bounded(720, 1, LIMITS["width"])
    num_frames: int = bounded(16, 1, LIMITS["frames"])
    stride: int = bounded(1, 1, 1024)
    on_error: Literal["raise", "skip"] = "raise"
    precompute: bool = False
    cache_dir: str | None = None
    synthetic_dir: str | None = None
    synthetic_seed: int = bounded(0, 0, MAX_SEED)
    num_workers: int = bounded(0, 0, 256)

    def validate(self, prefix: str) -> None:
        if not self.sources:
            raise ConfigError(f"{prefix}.sources must list at least one dataset")
        for index, source in enumerate(self.sources):
            source.validate(f"{prefix}.sources[{index}]")
        check_bounds(self, prefix)
        check_choice(f"{prefix}.on_error", self.on_error, ("raise", "skip"))


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

    learning_rate: float | None = bounded(None, 0, 1, open_low=True)
    adam_beta1: float = bounded(0.9, 0, 1, open_high=True)
    adam_beta2: float = bounded(0.999, 0, 1, open_high=True)
    adam_epsilon: float = bounded(1e-8, 0, 1, open_low=True)
    weight_decay: float = bounded(0.0, 0, 10)
    max_grad_norm: float | None = bounded(1.0, 0, 1e6, open_low=True)
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = bounded(0, 0, MAX_STEPS)
    batch_size: int = bounded(1, 1, 4096)
    gradient_accumulation_steps: int = bounded(1, 1, 4096)

    def validate(self, prefix: str) -> None:
        from diffusers.optimization import SchedulerType

        check_bounds(self, prefix)
        check_choice(f"{prefix}.lr_scheduler", self.lr_scheduler, tuple(s.value for s in SchedulerType))


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
        first_frame_noise: condition noise augmentation of first-frame tasks (``animate``), as
            CogVideoX image-to-video training does: the first frame gets Gaussian noise of a
            log-normal std ``exp(N(-3, 0.5))`` (model range) before it is encoded.
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
    text_dropout: float = bounded(0.1, 0, 1, open_high=True)
    first_frame_noise: bool = True

    def validate(self, prefix: str) -> None:
        unknown = sorted(set(self.tasks) - set(ALL_TASKS))
        if unknown:
            raise ConfigError(f"{prefix}.tasks has unknown task(s) {unknown}; tasks are {list(ALL_TASKS)}")
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
        check_bounds(self, prefix)


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

    max_steps: int = bounded(1000, 1, MAX_STEPS)
    seed: int = bounded(0, 0, MAX_SEED)
    mixed_precision: MixedPrecision = "no"
    output_root: str = "outputs/train"
    output_dir: str | None = None
    checkpoint_every: int = bounded(500, 1, MAX_STEPS)
    keep_checkpoints: int | None = bounded(3, 1, 10_000)
    log_every: int = bounded(1, 1, MAX_STEPS)
    tracker: Tracker = "auto"
    ema_decay: float | None = bounded(None, 0, 1, open_low=True, open_high=True)
    progress: bool = True
    num_threads: int | None = bounded(None, 1, 1024)

    def validate(self, prefix: str) -> None:
        check_bounds(self, prefix)
        check_choice(f"{prefix}.mixed_precision", self.mixed_precision, get_args(MixedPrecision))
        check_choice(f"{prefix}.tracker", self.tracker, get_args(Tracker))


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
        first_frame_tasks = sorted(t for t in FIRST_FRAME_TASKS if self.objective.tasks.get(t, 0) > 0)
        if first_frame_tasks and self.data.precompute:
            raise ConfigError(
                f"objective.tasks {first_frame_tasks} encode first frames on their own, the cache holds whole "
                "clips: set data.precompute = false"
            )
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


def check_choice(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")
