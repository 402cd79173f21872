"""Typed training configuration: dataclasses filled from TOML/YAML with every key checked.

A config file holds the settings of one stage, or common settings plus per-stage overrides in
``[stage.1]``, ``[stage.2]``, ``[stage.3]`` tables (the tiny built-in default does that). Values the
file leaves out take the stage's defaults (learning rate, trainable set, data freezing). Unknown
keys, wrong types and out-of-range values raise :class:`ConfigError` naming the dotted key, before
any model is built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from layerflow.layout import TASKS, AlphaRepresentation, LayerLayout, LayerSpec, Role, VaePass
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
CONFIG_DIR = Path(__file__).parent / "configs"
TINY_CONFIG = CONFIG_DIR / "tiny.toml"


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range; names the dotted key."""


@dataclass
class LayerEntry:
    """One layer of ``model.layout``: ``{ name = "fg1", role = "foreground" }``."""

    name: str
    role: Role


@dataclass
class LayoutConfig:
    """``model.layout``, in the form of ``model_index.json``'s ``layout`` entry.

    Example: ``layout = { alpha = "alpha_clip", layers = [{ name = "fg1", role = "foreground" },
    { name = "fg2", role = "foreground" }, { name = "bg", role = "background" },
    { name = "blend", role = "composite" }] }`` (foregrounds front to back, as data samples list them).
    ``vae_pass`` is how clips go through the VAE (``"per_clip"``, or ``"joint"`` as the official
    code); the precompute cache and the on-the-fly encoder follow it, as the pipeline does.
    """

    layers: list[LayerEntry]
    alpha: AlphaRepresentation = "alpha_clip"
    vae_pass: VaePass = "per_clip"

    def to_layout(self, prefix: str) -> LayerLayout:
        """The :class:`LayerLayout`; an invalid one raises :class:`ConfigError` naming ``prefix``."""
        try:
            layers = tuple(LayerSpec(e.name, e.role) for e in self.layers)
            return LayerLayout(layers, self.alpha, vae_pass=self.vae_pass)
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
        _positive(f"{prefix}.block_interval", self.block_interval)
        _choice(f"{prefix}.stage1_trains", self.stage1_trains, ("blocks", "all"))
        _positive(f"{prefix}.tiny_num_layers", self.tiny_num_layers)
        _positive(f"{prefix}.motion_rank", self.motion_rank)
        _positive(f"{prefix}.content_rank", self.content_rank)
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
        from .sources import SOURCE_KINDS

        _choice(f"{prefix}.kind", self.kind, tuple(SOURCE_KINDS))
        _positive(f"{prefix}.repeat", self.repeat)
        _positive(f"{prefix}.foregrounds", self.foregrounds)
        kind = SOURCE_KINDS[self.kind]
        for key in kind.required:
            if not getattr(self, key):
                raise ConfigError(f"{prefix}.{key} is required for kind={self.kind!r}")
        if self.foregrounds > 1 and not kind.multi_foreground:
            raise ConfigError(f"{prefix}.foregrounds: kind={self.kind!r} holds one foreground per sample")
        if self.num_samples is not None:
            _positive(f"{prefix}.num_samples", self.num_samples)


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
            _positive(f"{prefix}.{key}", getattr(self, key))
        _choice(f"{prefix}.on_error", self.on_error, ("raise", "skip"))
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
        _choice(f"{prefix}.lr_scheduler", self.lr_scheduler, tuple(s.value for s in SchedulerType))
        if self.lr_warmup_steps < 0:
            raise ConfigError(f"{prefix}.lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        _positive(f"{prefix}.batch_size", self.batch_size)
        _positive(f"{prefix}.gradient_accumulation_steps", self.gradient_accumulation_steps)


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
        _choice(f"{prefix}.task_mixing", self.task_mixing, get_args(TaskMixing))
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
        _positive(f"{prefix}.max_steps", self.max_steps)
        _positive(f"{prefix}.checkpoint_every", self.checkpoint_every)
        _positive(f"{prefix}.log_every", self.log_every)
        if self.keep_checkpoints is not None:
            _positive(f"{prefix}.keep_checkpoints", self.keep_checkpoints)
        _choice(f"{prefix}.mixed_precision", self.mixed_precision, get_args(MixedPrecision))
        _choice(f"{prefix}.tracker", self.tracker, get_args(Tracker))
        if self.num_threads is not None:
            _positive(f"{prefix}.num_threads", self.num_threads)
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


# ---------------------------------------------------------------------------------- loading
def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``) file as a dict; a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"config file {path}: expected .toml, .yaml or .yml, got {suffix!r}")
    import yaml

    try:
        if suffix == ".toml":
            content: Any = tomllib.loads(path.read_text())
        else:
            content = yaml.safe_load(path.read_text()) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as error:
        reason = " ".join(str(error).split())  # one line: YAML errors span several
        raise ConfigError(f"config file {path} is not valid {suffix[1:].upper()}: {reason}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a table/mapping at the top level")
    return content


def merge_tables(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` deep-merged into ``base`` (tables merge, anything else replaces)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_tables(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def resolve_stage(content: Mapping[str, Any], stage: int) -> dict[str, Any]:
    """Common settings merged with the ``[stage.N]`` table; a ``stage`` key must agree with ``stage``."""
    content = dict(content)
    per_stage = content.pop("stage", None)
    if isinstance(per_stage, Mapping):
        # TOML table keys are strings ([stage.2]); YAML reads `stage: {2: ...}` with integer keys.
        tables = {str(k): v for k, v in per_stage.items()}
        bad = sorted(k for k in tables if k not in {str(s) for s in STAGES})
        if bad:
            raise ConfigError(f"stage tables must be [stage.1], [stage.2] or [stage.3], got {bad}")
        if len(tables) != len(per_stage):
            raise ConfigError(
                f"stage tables are given twice (as text and as number): {sorted(per_stage, key=str)}"
            )
        content = merge_tables(content, tables.get(str(stage), {}))
    elif per_stage is not None and per_stage != stage:
        raise ConfigError(f"the config file is for stage {per_stage!r}, but --stage {stage} was given")
    content["stage"] = stage
    return content


def load_config(
    path: str | Path | None, stage: int, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """The config of ``stage`` from ``path`` (default: the tiny built-in config), validated."""
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
    content = resolve_stage(read_config_file(path if path is not None else TINY_CONFIG), stage)
    if overrides:
        content = merge_tables(content, overrides)
    return build(TrainConfig, content, "").validate()


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.batch_size=4"`` -> ``{"optim": {"batch_size": 4}}`` (the value read as TOML, else a string)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    result: dict[str, Any] = {}
    node = result
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return result


# ------------------------------------------------------------------------ typed construction
def build(cls: type, data: Any, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, checking keys and value types recursively."""
    label = prefix or "the config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label} must be a table/mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in [{prefix}]" if prefix else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(_dotted(prefix, k) for k in unknown)}{where}; known: {sorted(names)}"
        )
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [key for key in required if key not in data]
    if missing:
        raise ConfigError(f"{', '.join(_dotted(prefix, k) for k in missing)} is required")
    values = {key: _convert(hints[key], value, _dotted(prefix, key)) for key, value in data.items()}
    return cls(**values)


def _dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {hint}")
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        (item,) = get_args(hint)
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table/mapping, got {type(value).__name__}")
        _, item = get_args(hint)
        return {str(k): _convert(item, v, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):  # TOML and YAML both spell nan and inf; no setting means them
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {hint}")  # pragma: no cover - programming error


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value}")


def _choice(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


def config_json(config: TrainConfig) -> str:
    return json.dumps(config.to_dict(), indent=1, sort_keys=True)
