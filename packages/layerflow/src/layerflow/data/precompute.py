"""Precompute cache (finetrainers-style): VAE posteriors and layer text embeddings, once, on disk.

Layout of a cache folder::

    manifest.json                 fingerprints, settings, one entry per (sample, draw), skipped samples
    shard-00000.safetensors ...   "<entry>.latent_mean", "<entry>.latent_std", "<entry>.prompt_embeds"

The VAE posterior is stored as **mean and std**, not as one sample: the official trainer draws a fresh
posterior sample every step (``DiagonalGaussianRegularizer(sample=True)``), and keeping both moments
lets :class:`~layerflow.data.cached.CachedLayerDataset` do the same at the cost of 2x the storage,
instead of freezing one noise draw into the data forever.

Latents are the clips of the model's :class:`~layerflow.layout.LayerLayout` in layout order, encoded
as the pipeline encodes conditions; prompt embeddings are one prompt per layout layer, in layer order.
The manifest records fingerprints of the VAE, transparent VAE (``latent_offset`` layouts) and text
encoder (config + weight hash), of the layout, of the dataset (settings + file sizes and mtimes) and
of the preprocessing and cache settings (the VAE pass mode among them). A cache whose
fingerprints differ is stale: it is rebuilt, or refused with a message naming what changed. It also
records each shard's sha256 (:mod:`.integrity`): a shard damaged on disk is re-encoded alone, with a
warning naming it.
Shards and the manifest are written atomically (temporary file + rename), the manifest last, so an
interrupted run never leaves a cache that loads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from layerflow.atomic import atomic_file, write_json_atomic
from layerflow.codec import ClipCodec, LatentPosterior
from layerflow.geometry import FrameGeometry
from layerflow.layout import LayerLayout

from .base import LayeredDataset, digest
from .errors import SampleError
from .fingerprint import module_fingerprint
from .integrity import damaged_shards, file_sha256
from .sample import Layer, LayeredSample

logger = logging.getLogger(__name__)

CACHE_FORMAT = "layerflow-precompute"
CACHE_VERSION = 3  # 2: layout order; 3: shard checksums
MANIFEST = "manifest.json"
StalePolicy = Literal["rebuild", "raise"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class StaleCacheError(RuntimeError):
    """The cache on disk was made with other encoders, data or settings than the ones given."""


@dataclass(frozen=True)
class CacheSettings:
    """How the cache is encoded and stored (all of it is part of the fingerprint).

    The VAE pass mode (``per_clip`` / ``joint``) is the layout's (:attr:`LayerLayout.vae_pass`),
    fingerprinted with the layout.

    Args:
        storage_dtype: dtype of the stored tensors (``"float32"``, ``"bfloat16"``, ``"float16"``).
        draws_per_sample: how many epochs of random choices (frame window, copy-paste placement)
            are encoded per sample; epoch ``e`` of the cached dataset reads draw ``e % draws``.
        samples_per_shard: entries per safetensors shard.
    """

    storage_dtype: str = "float32"
    draws_per_sample: int = 1
    samples_per_shard: int = 64

    def __post_init__(self) -> None:
        if self.storage_dtype not in _DTYPES:
            raise ValueError(f"storage_dtype must be one of {sorted(_DTYPES)}, got {self.storage_dtype!r}")
        if self.draws_per_sample < 1 or self.samples_per_shard < 1:
            raise ValueError("draws_per_sample and samples_per_shard must be >= 1")


@dataclass
class CacheManifest:
    """What ``manifest.json`` holds; entries are ``{"key", "sample_id", "index", "draw", "shard",
    "source", "fps", "prompts"}``, checksums map shard name -> sha256."""

    fingerprints: dict[str, str]
    settings: dict[str, Any]
    scaling_factor: float
    layout: dict[str, Any]
    """The model's layout (:meth:`LayerLayout.to_dict`): clips and prompts are in its order."""
    clip_frames: list[int]
    """Latent frames of each clip in layout order."""
    entries: list[dict[str, Any]] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    format: str = CACHE_FORMAT
    version: int = CACHE_VERSION

    @classmethod
    def load(cls, cache_dir: Path) -> CacheManifest:
        path = cache_dir / MANIFEST
        content = json.loads(path.read_text())
        if content.get("format") != CACHE_FORMAT or content.get("version") != CACHE_VERSION:
            raise StaleCacheError(
                f"{path}: format {content.get('format')!r} v{content.get('version')} is not "
                f"{CACHE_FORMAT!r} v{CACHE_VERSION}; rebuild the cache"
            )
        return cls(**content)

    def save(self, cache_dir: Path) -> None:
        write_json_atomic(cache_dir / MANIFEST, asdict(self), indent=1)

    def damaged_shards(self, cache_dir: Path) -> dict[str, str]:
        """Shard name -> what is wrong with it, for every shard missing or not matching its checksum."""
        return damaged_shards(cache_dir, self.shards, self.checksums)


@torch.no_grad()
def encode_sample(codec: ClipCodec, layers: Mapping[str, Layer]) -> tuple[LatentPosterior, FrameGeometry]:
    """The VAE posterior of one sample's layout clips, encoded by the pipeline's codec.

    ``layers`` are named as the codec's layout names them (:meth:`LayeredSample.for_layout`),
    ``[T, C, H, W]``; they are encoded exactly as the pipeline encodes the same frames as conditions.
    """
    frames = {name: layer.frames[None] for name, layer in layers.items()}
    t, _, h, w = next(iter(layers.values())).rgb.shape
    geometry = codec.geometry.check(t, h, w, codec.layout)
    return codec.encode(frames, geometry), geometry


@torch.no_grad()
def encode_prompts(text_encoder: nn.Module, sample: LayeredSample, layout: LayerLayout) -> torch.Tensor:
    """Layer prompt embeddings ``[L * S, D]`` of a sample, one prompt per layout layer in layout order."""
    sample = sample.for_layout(layout)
    output = text_encoder([sample.prompts[spec.name] for spec in layout.layers])
    embeddings = getattr(output, "embeddings", output)
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 3 or embeddings.shape[0] != 1:
        raise TypeError(
            f"text encoder must return a [1, L * S, D] tensor (or an object with .embeddings), got "
            f"{getattr(embeddings, 'shape', type(embeddings).__name__)}"
        )
    return embeddings[0].float().cpu()


def _check_text_encoder(text_encoder: nn.Module) -> None:
    if getattr(text_encoder, "layer_embedder", None) is not None:
        raise ValueError(
            "the text encoder adds a layer embedder, which is trained: cache the plain text embeddings "
            "(layer_embedder=None) and add the layer embeddings in the model"
        )


def cache_fingerprints(
    dataset: LayeredDataset, codec: ClipCodec, text_encoder: nn.Module, settings: CacheSettings
) -> dict[str, str]:
    """The fingerprints a cache of ``dataset`` with this codec, text encoder and settings must carry.

    The layout's fingerprint covers its VAE pass mode, so a ``per_clip`` cache never serves ``joint``.
    """
    fingerprints = {
        "vae": module_fingerprint(codec.vae),
        "text_encoder": module_fingerprint(text_encoder),
        "layout": digest(codec.layout.to_dict()),
        "dataset": dataset.fingerprint(),
        "preprocess": digest(dataset.preprocess.to_dict()),
        "settings": digest(asdict(settings)),
    }
    if codec.transparent_vae is not None:
        fingerprints["transparent_vae"] = module_fingerprint(codec.transparent_vae)
    return fingerprints


def describe_staleness(stored: dict[str, str], expected: dict[str, str]) -> str:
    changed = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
    names = {"vae": "the VAE", "text_encoder": "the text encoder", "dataset": "the dataset files or settings"}
    names |= {"layout": "the layer layout (or its VAE pass mode)", "transparent_vae": "the transparent VAE"}
    names |= {"preprocess": "the preprocessing settings", "settings": "the cache settings"}
    return ", ".join(names.get(k, k) for k in changed)


def _write_shard(cache_dir: Path, name: str, tensors: dict[str, torch.Tensor]) -> str:
    """Write one shard atomically; returns its sha256 (of the bytes written, before the rename)."""
    with atomic_file(cache_dir / name) as temporary:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary))
        return file_sha256(temporary)


def _entry_tensors(
    codec: ClipCodec, text_encoder: nn.Module, sample: LayeredSample, key: str, settings: CacheSettings
) -> tuple[dict[str, torch.Tensor], FrameGeometry]:
    """The stored tensors of one cache entry (a sample as read, or as matched to the layout), and the
    geometry its clips were encoded with."""
    dtype = _DTYPES[settings.storage_dtype]
    sample = sample.for_layout(codec.layout)
    posterior, geometry = encode_sample(codec, sample.layers)
    mean, std = posterior.mean[0].float().cpu(), posterior.std[0].float().cpu()
    tensors = {f"{key}.latent_mean": mean.to(dtype), f"{key}.latent_std": std.to(dtype)}
    tensors[f"{key}.prompt_embeds"] = encode_prompts(text_encoder, sample, codec.layout).to(dtype)
    return tensors, geometry


def _repair_shards(
    cache_dir: Path,
    manifest: CacheManifest,
    damaged: dict[str, str],
    dataset: LayeredDataset,
    codec: ClipCodec,
    text_encoder: nn.Module,
    settings: CacheSettings,
) -> None:
    """Re-encode the entries of each damaged shard (same epochs and indices) and rewrite it."""
    for name, reason in damaged.items():
        entries = [entry for entry in manifest.entries if entry["shard"] == name]
        logger.warning(
            "precompute cache %s: shard %s is damaged (%s); re-encoding its %d entries",
            cache_dir, name, reason, len(entries),
        )  # fmt: skip
        tensors: dict[str, torch.Tensor] = {}
        for entry in entries:
            dataset.set_epoch(int(entry["draw"]))
            tensors |= _entry_tensors(
                codec, text_encoder, dataset.load_sample(int(entry["index"])), entry["key"], settings
            )[0]
        manifest.checksums[name] = _write_shard(cache_dir, name, tensors)
    dataset.set_epoch(0)
    manifest.save(cache_dir)


def _matching_manifest(cache_dir: Path, fingerprints: dict[str, str]) -> tuple[CacheManifest | None, str]:
    """The cache's manifest when its fingerprints are ``fingerprints``; else ``None`` and what changed."""
    try:
        previous = CacheManifest.load(cache_dir)
    except (StaleCacheError, json.JSONDecodeError, TypeError) as error:
        return None, str(error)
    reason = describe_staleness(previous.fingerprints, fingerprints)
    return (None, reason) if reason else (previous, "")


def _clear(cache_dir: Path) -> None:
    """Remove a previous cache: the manifest first (so nothing half-old loads), then every shard."""
    (cache_dir / MANIFEST).unlink(missing_ok=True)
    for shard in cache_dir.glob("shard-*.safetensors"):
        shard.unlink()


def _reusable_manifest(
    cache_dir: Path, fingerprints: dict[str, str], on_stale: StalePolicy
) -> CacheManifest | None:
    """The cache's manifest when it matches ``fingerprints``; ``None`` (warned) or an error when stale."""
    previous, reason = _matching_manifest(cache_dir, fingerprints)
    if previous is not None:
        return previous
    message = f"precompute cache {cache_dir} is stale: {reason} changed since it was written"
    if on_stale == "raise":
        raise StaleCacheError(message + "; delete it or precompute with on_stale='rebuild'")
    logger.warning("%s; rebuilding", message)
    return None


def _encode_into(
    manifest: CacheManifest,
    cache_dir: Path,
    dataset: LayeredDataset,
    codec: ClipCodec,
    text_encoder: nn.Module,
    settings: CacheSettings,
    progress: bool,
) -> None:
    """Encode every draw of every sample into shards of ``cache_dir``, recording entries in ``manifest``."""
    pending: dict[str, torch.Tensor] = {}

    def flush() -> None:
        if pending:
            name = f"shard-{len(manifest.shards):05d}.safetensors"
            manifest.checksums[name] = _write_shard(cache_dir, name, pending)
            manifest.shards.append(name)
            pending.clear()

    jobs = [(draw, index) for draw in range(settings.draws_per_sample) for index in range(len(dataset))]
    for draw, index in tqdm(jobs, desc="precomputing latents and text", disable=not progress):
        dataset.set_epoch(draw)
        try:
            sample = dataset.load_sample(index)
        except SampleError as error:
            if dataset.on_error == "raise":
                raise
            dataset.skips.record(error)
            manifest.skipped.append({"sample_id": error.sample_id, "draw": str(draw), "reason": error.reason})
            continue
        sample = sample.for_layout(codec.layout)
        key = str(len(manifest.entries))
        tensors, geometry = _entry_tensors(codec, text_encoder, sample, key, settings)
        manifest.clip_frames = list(geometry.clip_latent_frames)
        pending |= tensors
        manifest.entries.append(
            {
                "key": key,
                "sample_id": sample.sample_id,
                "index": index,
                "draw": draw,
                "shard": f"shard-{len(manifest.shards):05d}.safetensors",
                "source": sample.source,
                "fps": sample.fps,
                "prompts": sample.prompts,
            }
        )
        if len(pending) >= 3 * settings.samples_per_shard:
            flush()
    flush()
    dataset.set_epoch(0)
    if not manifest.entries:
        raise RuntimeError(
            f"no sample of {type(dataset).__name__} could be encoded:\n{dataset.skips.summary()}"
        )


def precompute_cache(
    dataset: LayeredDataset,
    codec: ClipCodec,
    text_encoder: nn.Module,
    cache_dir: str | Path,
    settings: CacheSettings | None = None,
    *,
    on_stale: StalePolicy = "rebuild",
    progress: bool = True,
) -> CacheManifest:
    """Encode ``dataset`` into ``cache_dir``, or reuse the cache there when its fingerprints match.

    Args:
        codec: the pipeline's :class:`~layerflow.codec.ClipCodec` (layout, geometry, VAE, transparent
            VAE): samples are matched to its layout (:meth:`LayeredSample.for_layout`) and encoded
            exactly as the pipeline encodes conditions, in the layout's VAE pass mode.
        text_encoder: a module mapping a list of layer prompts to ``[1, L * S, D]`` embeddings (or an
            object with ``.embeddings``), e.g. ``layer_embeddings.LayerPromptEncoder`` without a layer
            embedder.
        on_stale: ``"rebuild"`` re-encodes a stale cache (with a warning saying what changed);
            ``"raise"`` refuses with :class:`StaleCacheError`.

    Samples that fail follow the dataset's ``on_error``: raised, or skipped and listed in the manifest.
    """
    settings = settings or CacheSettings()
    if on_stale not in ("rebuild", "raise"):
        raise ValueError(f"on_stale must be 'rebuild' or 'raise', got {on_stale!r}")
    _check_text_encoder(text_encoder)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprints = cache_fingerprints(dataset, codec, text_encoder, settings)
    if (cache_dir / MANIFEST).exists():
        previous = _reusable_manifest(cache_dir, fingerprints, on_stale)
        if previous is not None:
            damaged = previous.damaged_shards(cache_dir)
            if damaged:
                _repair_shards(cache_dir, previous, damaged, dataset, codec, text_encoder, settings)
            else:
                logger.info(
                    "precompute cache %s is up to date (%d entries, checksums verified)",
                    cache_dir, len(previous.entries),
                )  # fmt: skip
            return previous
    _clear(cache_dir)
    manifest = CacheManifest(
        fingerprints=fingerprints,
        settings=asdict(settings),
        scaling_factor=codec.geometry.scaling_factor,
        layout=codec.layout.to_dict(),
        clip_frames=[],
    )
    _encode_into(manifest, cache_dir, dataset, codec, text_encoder, settings, progress)
    manifest.save(cache_dir)
    return manifest
