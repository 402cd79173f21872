"""The training data source kinds, declared once: kind -> required config keys -> dataset factory.

``data.sources`` entries name a kind of :data:`SOURCE_KINDS`; :func:`check_source_kinds` validates an
entry against its kind's required keys when a config loads, and :func:`build_source` calls the kind's factory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerflow.data import (
    CopyPasteDataset,
    LayeredDataset,
    OfficialLayoutDataset,
    Preprocess,
    SimpleLayoutDataset,
    StaticImageDataset,
)

from .schema import ConfigError, SourceConfig, TrainConfig, check_choice

#: ``factory(config, source, preprocess, options, progress)``; ``options`` are ``on_error`` and ``seed``.
SourceFactory = Callable[[TrainConfig, SourceConfig, Preprocess, dict[str, Any], bool], LayeredDataset[Any]]


@dataclass(frozen=True)
class SourceKind:
    """One kind of training source: the config keys it needs and how its dataset is built."""

    required: tuple[str, ...]
    build: SourceFactory
    multi_foreground: bool = False
    """Whether ``foregrounds > 1`` is supported (several foreground layers per sample)."""


def synthetic_root(config: TrainConfig, source: SourceConfig, progress: bool) -> Path:
    """Generate (once, deterministically by seed) the embedded synthetic clips; returns the train split."""
    from layerflow.synthetic import SyntheticConfig
    from layerflow.synthetic.writers import generate_dataset

    data = config.data
    count = source.num_samples or 16
    frames = data.num_frames * data.stride
    name = f"n{count}-{data.height}x{data.width}x{frames}-seed{data.synthetic_seed}"
    folder = config.synthetic_dir / name
    synthetic = SyntheticConfig(num_frames=frames, height=max(16, data.height), width=max(16, data.width))
    generate_dataset(
        folder, count, 0, synthetic, seed=data.synthetic_seed, layouts=("simple",), progress=progress
    )
    return folder / "train"


def _synthetic(
    config: TrainConfig, source: SourceConfig, preprocess: Preprocess, options: dict[str, Any], progress: bool
) -> LayeredDataset[Any]:
    """One foreground: the generated clips as they are. ``foregrounds = N``: N of the generated
    objects pasted over one generated background per sample (copy-paste, exact alphas)."""
    root = synthetic_root(config, source, progress)
    if source.foregrounds == 1:
        return SimpleLayoutDataset(root, preprocess, **options)
    return CopyPasteDataset(root, root, preprocess, num_foregrounds=source.foregrounds, **options)


SOURCE_KINDS: dict[str, SourceKind] = {
    "synthetic": SourceKind((), _synthetic, multi_foreground=True),
    "simple": SourceKind(
        ("root",),
        lambda config, source, pre, options, progress: SimpleLayoutDataset(str(source.root), pre, **options),
    ),
    "official": SourceKind(
        ("root",),
        lambda config, source, pre, options, progress: OfficialLayoutDataset(
            str(source.root), pre, meta_file=source.meta_file, **options
        ),
    ),
    "static_images": SourceKind(
        ("root",),
        lambda config, source, pre, options, progress: StaticImageDataset(str(source.root), pre, **options),
    ),
    "copy_paste": SourceKind(
        ("foreground_clips", "background_clips"),
        lambda config, source, pre, options, progress: CopyPasteDataset(
            str(source.foreground_clips),
            str(source.background_clips),
            pre,
            num_samples=source.num_samples,
            num_foregrounds=source.foregrounds,
            **options,
        ),
        multi_foreground=True,
    ),
}


def check_source_kinds(config: TrainConfig) -> None:
    """Every ``data.sources`` entry names a kind of :data:`SOURCE_KINDS` and sets the keys it requires."""
    for index, source in enumerate(config.data.sources):
        prefix = f"data.sources[{index}]"
        check_choice(f"{prefix}.kind", source.kind, tuple(SOURCE_KINDS))
        kind = SOURCE_KINDS[source.kind]
        for key in kind.required:
            if not getattr(source, key):
                raise ConfigError(f"{prefix}.{key} is required for kind={source.kind!r}")
        if source.foregrounds > 1 and not kind.multi_foreground:
            raise ConfigError(f"{prefix}.foregrounds: kind={source.kind!r} holds one foreground per sample")


def check_source_paths(config: TrainConfig) -> None:
    """The folders the data sources read exist: checked before any model loads, so a typo costs a
    second instead of a model load (not at config load: shipped configs name data not yet there)."""
    for index, source in enumerate(config.data.sources):
        for key in SOURCE_KINDS[source.kind].required:
            folder = Path(getattr(source, key))
            if not folder.is_dir():
                problem = "is not a folder" if folder.exists() else "does not exist"
                raise ConfigError(f"data.sources[{index}].{key}: {folder} {problem}")
