"""LayerFlow training data: one layered sample type (layers by name), four dataset readers, a precompute cache."""

from layerflow.media import FrameError

from .base import LayeredDataset
from .cached import CachedBatch, CachedLayerDataset, CachedSample, collate_cached
from .copy_paste import CopyPasteDataset
from .errors import NoSamplesError, OnError, SampleError, SkipReport
from .official import OfficialLayoutDataset
from .precompute import (
    CacheManifest,
    CacheSettings,
    StaleCacheError,
    cache_fingerprints,
    encode_prompts,
    encode_sample,
    precompute_cache,
)
from .sample import (
    Layer,
    LayeredBatch,
    LayeredSample,
    collate_for_layout,
    collate_layered,
    composite_layers,
    foreground_names,
    to_static,
)
from .sampling import FrameSampler, sample_rng
from .simple import SimpleLayoutDataset
from .static import StaticImageDataset
from .transforms import Preprocess

__all__ = [
    "CacheManifest",
    "CacheSettings",
    "CachedBatch",
    "CachedLayerDataset",
    "CachedSample",
    "CopyPasteDataset",
    "FrameError",
    "FrameSampler",
    "Layer",
    "LayeredBatch",
    "LayeredDataset",
    "LayeredSample",
    "OfficialLayoutDataset",
    "OnError",
    "Preprocess",
    "NoSamplesError",
    "SampleError",
    "SimpleLayoutDataset",
    "SkipReport",
    "StaleCacheError",
    "StaticImageDataset",
    "cache_fingerprints",
    "collate_cached",
    "collate_for_layout",
    "collate_layered",
    "composite_layers",
    "encode_prompts",
    "encode_sample",
    "foreground_names",
    "precompute_cache",
    "sample_rng",
    "to_static",
]
