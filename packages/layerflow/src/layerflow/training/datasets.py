"""Training data from the config: dataset readers, frozen static clips, caches, the epoch sampler.

Every source of ``data.sources`` becomes a :class:`~layerflow.data.LayeredDataset` (or its precompute
cache); sources are concatenated ``repeat`` times each. The :class:`EpochBatchSampler` shuffles that
mix once per epoch from ``(seed, epoch)`` and hands each rank its slice of every global batch, so the
data position of a run is just ``(epoch, batch)`` and a resumed run reads exactly what the
uninterrupted run would have read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler

from layerflow.codec import ClipCodec
from layerflow.data import (
    CachedLayerDataset,
    CacheSettings,
    FrameSampler,
    LayeredDataset,
    LayeredSample,
    NoSamplesError,
    Preprocess,
    SampleError,
    precompute_cache,
    to_static,
)

from .schema import ConfigError, SourceConfig, TrainConfig
from .sources import SOURCE_KINDS


class FrozenFrames(LayeredDataset[int]):
    """Another dataset's clips frozen to one random frame repeated (source ``"static"``, motion gate 1).

    LayerFlow's motion-LoRA data: the official stage-1 data repeats one random frame 16 times.
    The frame is drawn from the same ``(seed, epoch, index)`` generator as the clip itself.
    """

    def __init__(self, inner: LayeredDataset[Any]):
        super().__init__(inner.preprocess, on_error=inner.on_error, seed=inner.seed)
        self.inner = inner
        self._collect((inner.sample_ids[i], partial(int, i)) for i in range(len(inner)))

    def _record_id(self, record: int) -> str:
        return f"{self.inner.sample_ids[record]}:frozen"

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.inner.set_epoch(epoch)

    def _load(self, record: int, rng: np.random.Generator) -> LayeredSample:
        sample = self.inner.load_sample(record)  # draws from its own copy of this sample's stream
        frame = int(rng.spawn(1)[0].integers(sample.num_frames))
        return to_static(sample, frame)

    def _fingerprint_payload(self) -> dict[str, Any]:
        return {"inner": self.inner.fingerprint()}


def preprocess_for(config: TrainConfig) -> Preprocess:
    data = config.data
    return Preprocess(
        height=data.height,
        width=data.width,
        frames=FrameSampler(num_frames=data.num_frames, stride=data.stride),
    )


def build_source(config: TrainConfig, source: SourceConfig, *, progress: bool = False) -> LayeredDataset[Any]:
    """One configured source as a dataset yielding :class:`~layerflow.data.LayeredSample`."""
    options: dict[str, Any] = {"on_error": config.data.on_error, "seed": config.run.seed}
    try:
        dataset = SOURCE_KINDS[source.kind].build(config, source, preprocess_for(config), options, progress)
    except (SampleError, NoSamplesError, ConfigError):
        raise
    except (OSError, ValueError) as error:  # a missing folder, an unreadable meta file: named by its key
        index = next(i for i, s in enumerate(config.data.sources) if s is source)
        raise ConfigError(f"data.sources[{index}] (kind={source.kind!r}): {error}") from error
    return FrozenFrames(dataset) if source.freeze else dataset


class RepeatedMix(ConcatDataset[Any]):
    """Sources concatenated ``repeat`` times each; ``set_epoch`` reaches every source once."""

    def __init__(self, sources: Sequence[Dataset[Any]], repeats: Sequence[int]):
        self.sources = list(sources)
        super().__init__([s for s, r in zip(self.sources, repeats, strict=True) for _ in range(r)])

    def set_epoch(self, epoch: int) -> None:
        for source in self.sources:
            source.set_epoch(epoch)  # type: ignore[attr-defined]


def build_layered_mix(
    config: TrainConfig, *, progress: bool = False
) -> tuple[RepeatedMix, list[LayeredDataset[Any]]]:
    datasets = [build_source(config, source, progress=progress) for source in config.data.sources]
    return RepeatedMix(datasets, [s.repeat for s in config.data.sources]), datasets


def build_cached_mix(
    config: TrainConfig, codec: ClipCodec, text_encoder: torch.nn.Module, *, progress: bool = False
) -> RepeatedMix:
    """Precompute (or reuse, when up to date) one cache per source, encoded by ``codec``, and read the mix."""
    _, datasets = build_layered_mix(config, progress=progress)
    settings = CacheSettings()
    cached = []
    for index, (source, dataset) in enumerate(zip(config.data.sources, datasets, strict=True)):
        directory = config.cache_dir / f"source{index}-{source.kind}{'-frozen' if source.freeze else ''}"
        manifest = precompute_cache(dataset, codec, text_encoder, directory, settings, progress=progress)
        cached.append(
            CachedLayerDataset(  # precompute_cache has just verified (or repaired) every shard
                directory, expected_fingerprints=manifest.fingerprints, seed=config.run.seed, verify=False
            )
        )
    return RepeatedMix(cached, [s.repeat for s in config.data.sources])


class EpochBatchSampler(Sampler[list[int]]):
    """Per-rank batches of a per-epoch shuffle; resumable at any ``(epoch, batch)``.

    Global batch ``b`` of epoch ``e`` is items ``perm_e[b*G : (b+1)*G]`` with ``G = batch_size *
    world_size``; rank ``r`` takes its ``r``-th slice of ``batch_size``. Incomplete global batches at
    the end of an epoch are dropped, so every rank sees the same number of batches.
    """

    def __init__(self, length: int, batch_size: int, *, world_size: int = 1, rank: int = 0, seed: int = 0):
        self.length, self.batch_size, self.world_size, self.rank, self.seed = (
            length,
            batch_size,
            world_size,
            rank,
            seed,
        )
        self.global_batch = batch_size * world_size
        if length < self.global_batch:
            raise ValueError(
                f"the training data has {length} samples, fewer than one global batch of {self.global_batch} "
                f"({batch_size} per device x {world_size} processes): add data or lower optim.batch_size"
            )
        self.batches_per_epoch = length // self.global_batch
        self.epoch = 0
        self.start_batch = 0

    def set_position(self, epoch: int, batch: int) -> None:
        self.epoch, self.start_batch = epoch, batch

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        )
        return torch.randperm(self.length, generator=generator)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        order = self.permutation(self.epoch)
        for batch in range(self.start_batch, self.batches_per_epoch):
            start = batch * self.global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size].tolist()
