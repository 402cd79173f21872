"""Typed training configuration: the dataclasses of :mod:`.schema` filled from TOML/YAML with every key checked.

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
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .schema import STAGE_LEARNING_RATES, STAGES, ConfigError, TrainConfig

__all__ = [
    "CONFIG_DIR",
    "STAGE_LEARNING_RATES",
    "TINY_CONFIG",
    "ConfigError",
    "TrainConfig",
    "build",
    "config_json",
    "load_config",
    "merge_tables",
    "parse_override",
    "read_config_file",
    "resolve_stage",
]

CONFIG_DIR = Path(__file__).parent / "configs"
TINY_CONFIG = CONFIG_DIR / "tiny.toml"


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
    from .sources import check_source_kinds  # the dataset classes load only when a config does

    config = build(TrainConfig, content, "").validate()
    check_source_kinds(config)
    return config


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
    try:
        return cls(**values)
    except ValueError as error:  # a type's own check (e.g. a layer name), named by the dotted key
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{label}: {error}") from None


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


def config_json(config: TrainConfig) -> str:
    return json.dumps(config.to_dict(), indent=1, sort_keys=True)


#: Settings a resumed run may change: how long, where and how visibly it runs, not what it trains.
RESUMABLE_SETTINGS = frozenset(
    {
        "run.max_steps",
        "run.output_root",
        "run.output_dir",
        "run.checkpoint_every",
        "run.keep_checkpoints",
        "run.log_every",
        "run.tracker",
        "run.progress",
        "run.num_threads",
        "data.num_workers",
        "data.cache_dir",
        "model.gradient_checkpointing",
    }
)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for each setting that differs between two ``to_dict()`` configs, but the
    :data:`RESUMABLE_SETTINGS` (compared as JSON holds them: a tuple equals its list)."""
    old, new = (_flatten(json.loads(json.dumps(tree))) for tree in (before, after))
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if key not in RESUMABLE_SETTINGS and old.get(key) != new.get(key)
    ]
