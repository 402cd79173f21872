"""What every layered dataset shares: error policy, epochs, validation pass and fingerprint."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from layerflow.layout import Role
from layerflow.media import FrameError, frames_to_tensor

from .checks import RawLayer, RawLayers, check_lengths, check_raw_layers
from .errors import NoSamplesError, OnError, SampleError, SkipReport, check_on_error
from .frames import FrameSequence
from .sample import Layer, LayeredSample, Source, composite_layers
from .sampling import sample_rng
from .transforms import Preprocess, resize_foreground, resize_opaque

RecordT = TypeVar("RecordT")


def sample_folders(root: Path) -> list[Path]:
    """The sub-folders of a dataset root (one per sample), sorted, hidden ones excluded."""
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a directory")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def build_sample(
    sample_id: str,
    layers: RawLayers,
    preprocess: Preprocess,
    *,
    prompts: dict[str, str],
    source: Source,
    fps: float,
) -> LayeredSample:
    """Check decoded layers, resize + crop them and compute a missing composite: the readers' last step."""
    check_raw_layers(sample_id, layers)
    h, w, mode = preprocess.height, preprocess.width, preprocess.resample
    resized: dict[str, Layer] = {}
    for name, raw in layers.layers.items():
        color = frames_to_tensor(raw.color)
        if raw.alpha is None:
            resized[name] = Layer(raw.role, resize_opaque(color, h, w, mode))
        else:
            resized[name] = Layer(
                raw.role, *resize_foreground(color, frames_to_tensor(raw.alpha), h, w, mode)
            )
    if layers.composite is not None:
        composite = resize_opaque(frames_to_tensor(layers.composite), h, w, mode)
    else:
        backgrounds = [layer.rgb for layer in resized.values() if layer.role == "background"]
        if len(backgrounds) != 1:
            raise SampleError(
                sample_id, "the composite can be computed only over exactly one background layer"
            )
        composite = composite_layers(
            [layer for layer in resized.values() if layer.alpha is not None], backgrounds[0]
        )
    resized[layers.composite_name] = Layer("composite", composite)
    return LayeredSample(sample_id=sample_id, layers=resized, prompts=prompts, source=source, fps=fps)


@dataclass
class LayerFile:
    """One stored layer: its role, colour frames (RGBA when a transparent layer has no separate
    ``alpha``) and, for transparent layers with a separate matte, the alpha frames."""

    role: Role
    color: FrameSequence
    alpha: FrameSequence | None = None


@dataclass
class LayerFiles:
    """The stored layers of one clip sample in depth order, before anything is decoded."""

    layers: dict[str, LayerFile]
    composite: FrameSequence | None
    composite_name: str
    prompts: dict[str, str]
    source: Source
    fps: float

    def sequences(self) -> dict[str, FrameSequence]:
        named: dict[str, FrameSequence | None] = {}
        for name, layer in self.layers.items():
            named |= {name: layer.color, f"{name} alpha": layer.alpha}
        named[self.composite_name] = self.composite
        return {name: seq for name, seq in named.items() if seq is not None}

    def paths(self) -> list[Path]:
        return [path for seq in self.sequences().values() for path in seq.paths()]


def pick_frames(
    sample_id: str, preprocess: Preprocess, length: int, fps: float, rng: np.random.Generator
) -> list[int]:
    """Frame indices by the preprocessing's sampler; a too-short clip is a :class:`SampleError`."""
    try:
        return preprocess.frames.indices(length, fps, rng).tolist()
    except ValueError as error:
        raise SampleError(sample_id, str(error)) from None


def read_clip(
    sample_id: str, files: LayerFiles, preprocess: Preprocess, rng: np.random.Generator
) -> RawLayers:
    """Pick frame indices once for all layers (which must agree in length) and decode only those."""
    length = check_lengths(sample_id, {name: len(seq) for name, seq in files.sequences().items()})
    indices = pick_frames(sample_id, preprocess, length, files.fps, rng)
    layers: dict[str, RawLayer] = {}
    for name, layer in files.layers.items():
        color = layer.color.read(indices)
        if layer.role != "foreground":
            layers[name] = RawLayer(layer.role, color)
        elif layer.alpha is None:
            layers[name] = RawLayer(layer.role, color[..., :3], color[..., 3:])
        else:
            layers[name] = RawLayer(layer.role, color, layer.alpha.read(indices))
    composite = files.composite.read(indices) if files.composite is not None else None
    return RawLayers(layers, composite, files.composite_name)


def file_stats(paths: Iterable[Path], root: Path) -> list[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` per file: a cheap content proxy for fingerprints."""
    stats = []
    for path in paths:
        stat = path.stat()
        stats.append((str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns))
    return stats


def digest(payload: Any) -> str:
    """sha256 of a JSON-serialisable payload (sorted keys), the one hash used in fingerprints."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class LayeredDataset(Dataset[LayeredSample], ABC, Generic[RecordT]):
    """Base of every reader: yields :class:`LayeredSample`, reproducibly for ``(seed, epoch, index)``.

    Args:
        preprocess: size, frame sampling and interpolation.
        on_error: ``"raise"`` (default) raises :class:`SampleError` on a bad sample; ``"skip"`` logs a
            warning, records it in :attr:`skips` and serves the next good sample instead (so the batch
            size stays fixed). Call :meth:`validate` once to find and drop every bad sample up front.
        seed: base seed of every random choice (frame window, placement, ...).

    Call :meth:`set_epoch` at each epoch (as with ``DistributedSampler``) for fresh random windows.
    """

    def __init__(self, preprocess: Preprocess | None = None, *, on_error: OnError = "raise", seed: int = 0):
        self.preprocess = preprocess if preprocess is not None else Preprocess()
        self.on_error = check_on_error(on_error)
        self.seed = seed
        self.epoch = 0
        self.skips = SkipReport()
        self.records: list[RecordT] = []
        self._indices: list[int] = []

    # -- what a reader implements ---------------------------------------------------------------
    @abstractmethod
    def _record_id(self, record: int) -> str:
        """The sample id of ``self.records[record]``."""

    @abstractmethod
    def _load(self, record: int, rng: np.random.Generator) -> LayeredSample:
        """Decode and preprocess record ``record``; raise :class:`SampleError` or :class:`FrameError`."""

    @abstractmethod
    def _fingerprint_payload(self) -> dict[str, Any]:
        """Settings and per-file stats that define the dataset's content (preprocessing excluded)."""

    def _check_stored(self, record: int) -> None:
        """Decode every stored frame of record ``record`` for :meth:`validate`, raising :class:`FrameError`.

        The default adds nothing to :meth:`load_sample`: right for readers whose samples read every
        stored frame; readers of clips longer than the frame window override it."""

    # -- shared behaviour -----------------------------------------------------------------------
    def _collect(self, candidates: Iterable[tuple[str, Callable[[], RecordT]]]) -> None:
        """Build the records from ``(sample_id, build)`` pairs, applying ``on_error`` to structural
        problems (missing files, bad metadata), then index them. Call once from a reader's ``__init__``."""
        for sample_id, build in candidates:
            try:
                self.records.append(build())
            except (SampleError, FrameError) as error:
                sample_error = error if isinstance(error, SampleError) else SampleError(sample_id, str(error))
                if self.on_error == "raise":
                    raise sample_error from None
                self.skips.record(sample_error)
        self._indices = list(range(len(self.records)))
        if not self._indices:
            where = f" in {self.root}" if hasattr(self, "root") else ""
            skipped = f" ({len(self.skips)} skipped)" if self.skips else ""
            raise NoSamplesError(f"{type(self).__name__} found no usable samples{where}{skipped}")

    def __len__(self) -> int:
        return len(self._indices)

    @property
    def sample_ids(self) -> list[str]:
        return [self._record_id(r) for r in self._indices]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load_sample(self, index: int) -> LayeredSample:
        """Sample ``index`` for the current epoch, raising :class:`SampleError` whatever ``on_error`` says."""
        record = self._indices[index]
        try:
            return self._load(record, sample_rng(self.seed, self.epoch, index))
        except FrameError as error:
            raise SampleError(self._record_id(record), str(error)) from error

    def __getitem__(self, index: int) -> LayeredSample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        for attempt in range(len(self)):
            try:
                return self.load_sample((index + attempt) % len(self))
            except SampleError as error:
                if self.on_error == "raise":
                    raise
                self.skips.record(error)
        raise RuntimeError(f"every sample of {type(self).__name__} failed:\n{self.skips.summary()}")

    def check_sample(self, index: int) -> None:
        """What :meth:`validate` checks of sample ``index``: every stored frame (not only the frames
        this epoch's window picks) and the current epoch's sample through the preprocessing."""
        record = self._indices[index]
        try:
            self._check_stored(record)
        except FrameError as error:
            raise SampleError(self._record_id(record), str(error)) from error
        self.load_sample(index)

    def validate(self, *, progress: bool = True) -> list[SampleError]:
        """Check every sample once (:meth:`check_sample`); returns the failures and, with
        ``on_error="skip"``, drops them.

        With ``on_error="raise"`` the first failure is raised. The skip counts of a ``DataLoader``'s
        worker processes stay in those processes; this pass gives one authoritative count.
        """
        failures: list[SampleError] = []
        keep: list[int] = []
        for index in tqdm(range(len(self)), desc=f"validating {type(self).__name__}", disable=not progress):
            try:
                self.check_sample(index)
                keep.append(self._indices[index])
            except SampleError as error:
                if self.on_error == "raise":
                    raise
                self.skips.record(error)
                failures.append(error)
        self._indices = keep
        if not keep:
            raise RuntimeError(f"every sample of {type(self).__name__} failed:\n{self.skips.summary()}")
        return failures

    def fingerprint(self) -> str:
        """Hash of the dataset's settings and files (size + mtime), for precompute cache staleness."""
        payload = {"class": type(self).__qualname__, "seed": self.seed, "samples": self.sample_ids}
        return digest(payload | self._fingerprint_payload())
