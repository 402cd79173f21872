"""Training from a precompute cache: latents and text embeddings instead of pixels and prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from layerflow.layout import ClipContent, ClipSpec, LayerLayout

from .precompute import CacheManifest, StaleCacheError, describe_staleness
from .sample import Source


@dataclass
class CachedSample:
    """One cached sample.

    Attributes:
        latents: ``[F, C, h, w]`` VAE latents of the layout's clips in layout order (``clip_frames``
            latent frames each), already multiplied by the VAE ``scaling_factor``.
        prompt_embeds: ``[L * S, D]`` text embeddings, layout layer ``i``'s prompt in tokens ``i*S .. (i+1)*S``.
    """

    sample_id: str
    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    layout: LayerLayout
    clip_frames: tuple[int, ...]
    prompts: dict[str, str]
    source: Source
    fps: float

    @property
    def is_static(self) -> bool:
        return self.source == "static"

    def clip(self, layer: str, content: ClipContent = "color") -> torch.Tensor:
        """The latent frames of one clip: a layer's colour clip or (``alpha_clip``) its alpha clip."""
        index = self.layout.clips.index(ClipSpec(layer, content))
        start = sum(self.clip_frames[:index])
        return self.latents[start : start + self.clip_frames[index]]


@dataclass
class CachedBatch:
    """Cached samples stacked: ``latents [B, F, C, h, w]``, ``prompt_embeds [B, L * S, D]``."""

    sample_ids: list[str]
    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    clip_frames: tuple[int, ...]
    sources: list[Source]
    is_static: torch.Tensor
    """``[B]`` float, 1.0 for static samples: the per-sample motion gate."""
    fps: torch.Tensor

    def __len__(self) -> int:
        return len(self.sample_ids)


def collate_cached(samples: Sequence[CachedSample]) -> CachedBatch:
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    first = samples[0]
    return CachedBatch(
        sample_ids=[s.sample_id for s in samples],
        latents=torch.stack([s.latents for s in samples]),
        prompt_embeds=torch.stack([s.prompt_embeds for s in samples]),
        clip_frames=first.clip_frames,
        sources=[s.source for s in samples],
        is_static=torch.tensor([float(s.is_static) for s in samples]),
        fps=torch.tensor([float(s.fps) for s in samples]),
    )


class CachedLayerDataset(Dataset[CachedSample]):
    """Reads a cache written by :func:`~layerflow.data.precompute.precompute_cache`.

    Args:
        cache_dir: the cache folder.
        expected_fingerprints: when given (``cache_fingerprints(...)`` or the manifest that
            ``precompute_cache`` returned), a cache with other fingerprints raises
            :class:`StaleCacheError` naming what changed.
        sample_posterior: draw ``mean + std * eps`` (fresh ``eps`` per ``(seed, epoch, index)``, as the
            official trainer samples the posterior each step); ``False`` uses the mean.
        seed: seed of the posterior noise.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        *,
        expected_fingerprints: dict[str, str] | None = None,
        sample_posterior: bool = True,
        seed: int = 0,
    ):
        self.cache_dir = Path(cache_dir)
        if not (self.cache_dir / "manifest.json").is_file():
            raise FileNotFoundError(f"{self.cache_dir} holds no precompute cache (manifest.json is missing)")
        self.manifest = CacheManifest.load(self.cache_dir)
        if expected_fingerprints is not None:
            changed = describe_staleness(self.manifest.fingerprints, expected_fingerprints)
            if changed:
                raise StaleCacheError(
                    f"precompute cache {self.cache_dir} is stale: {changed} changed since it was written; "
                    "run precompute_cache again"
                )
        missing = [s for s in self.manifest.shards if not (self.cache_dir / s).is_file()]
        if missing:
            raise StaleCacheError(f"precompute cache {self.cache_dir} lacks shards {missing}; rebuild it")
        self.layout = LayerLayout.from_dict(self.manifest.layout)
        self.sample_posterior = sample_posterior
        self.seed = seed
        self.epoch = 0
        draws: dict[int, dict[int, dict]] = {}
        for entry in self.manifest.entries:
            draws.setdefault(int(entry["index"]), {})[int(entry["draw"])] = entry
        self._draws = [draws[index] for index in sorted(draws)]

    def __len__(self) -> int:
        return len(self._draws)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> CachedSample:
        draws = self._draws[index]
        available = sorted(draws)
        entry = draws[available[self.epoch % len(available)]]
        key = entry["key"]
        with safe_open(str(self.cache_dir / entry["shard"]), framework="pt") as shard:
            mean = shard.get_tensor(f"{key}.latent_mean").float()
            std = shard.get_tensor(f"{key}.latent_std").float()
            prompt_embeds = shard.get_tensor(f"{key}.prompt_embeds").float()
        latents = mean
        if self.sample_posterior:
            seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(seed)
            latents = mean + std * torch.randn(mean.shape, generator=generator)
        return CachedSample(
            sample_id=entry["sample_id"],
            latents=latents * self.manifest.scaling_factor,
            prompt_embeds=prompt_embeds,
            layout=self.layout,
            clip_frames=tuple(self.manifest.clip_frames),
            prompts=entry["prompts"],
            source=cast(Source, entry["source"]),
            fps=float(entry["fps"]),
        )
