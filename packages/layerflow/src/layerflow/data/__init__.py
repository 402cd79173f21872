"""LayerFlow training data: one layered sample type, four dataset readers and a precompute cache."""

from layerflow.media import FrameError

from .base import LayeredDataset
from .cached import CachedBatch, CachedLayerDataset, CachedSample, collate_cached
from .copy_paste import CopyPasteDataset
from .errors import OnError, SampleError, SkipReport
from .official import OfficialLayoutDataset
from .precompute import (
    CacheManifest,
    CacheSettings,
    StaleCacheError,
    cache_fingerprints,
    encode_latents,
    encode_prompts,
    precompute_cache,
)
from .sample import (
    CLIP_ORDER,
    PROMPT_ROLES,
    LayeredBatch,
    LayeredSample,
    ModelInputs,
    collate_layered,
    to_model_inputs,
    to_static,
)
from .sampling import FrameSampler, sample_rng
from .simple import SimpleLayoutDataset
from .static import StaticImageDataset
from .transforms import Preprocess

__all__ = [
    "CLIP_ORDER",
    "PROMPT_ROLES",
    "CacheManifest",
    "CacheSettings",
    "CachedBatch",
    "CachedLayerDataset",
    "CachedSample",
    "CopyPasteDataset",
    "FrameError",
    "FrameSampler",
    "LayeredBatch",
    "LayeredDataset",
    "LayeredSample",
    "ModelInputs",
    "OfficialLayoutDataset",
    "OnError",
    "Preprocess",
    "SampleError",
    "SimpleLayoutDataset",
    "SkipReport",
    "StaleCacheError",
    "StaticImageDataset",
    "cache_fingerprints",
    "collate_cached",
    "collate_layered",
    "encode_latents",
    "encode_prompts",
    "precompute_cache",
    "sample_rng",
    "to_model_inputs",
    "to_static",
]
