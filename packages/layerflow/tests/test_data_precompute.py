"""Precompute cache with a tiny CogVideoX VAE and a tiny T5: encoding, reuse, staleness, training reads."""

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX

from layer_embeddings import LayerEmbedder, LayerPromptEncoder
from layer_embeddings.testing import build_tiny_t5_encoder, build_word_tokenizer
from layerflow.data import (
    CachedLayerDataset,
    CacheSettings,
    FrameSampler,
    Preprocess,
    SimpleLayoutDataset,
    StaleCacheError,
    cache_fingerprints,
    collate_cached,
    encode_latents,
    precompute_cache,
)
from layerflow.data.testing import PROMPTS, write_simple_sample
from layerflow.layout import LayerLayout

OFFICIAL = LayerLayout.official()
PRE = Preprocess(height=16, width=16, frames=FrameSampler(num_frames=8, start="first"))


def tiny_vae(seed: int = 0) -> AutoencoderKLCogVideoX:
    torch.manual_seed(seed)
    return AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
    ).eval()


@pytest.fixture(scope="module")
def encoders():
    tokenizer = build_word_tokenizer(" ".join(PROMPTS.values()).split(), model_max_length=8)
    text = LayerPromptEncoder(build_tiny_t5_encoder(tokenizer.vocab_size), tokenizer, max_length=8)
    return tiny_vae(), text


@pytest.fixture()
def dataset(tmp_path):
    for i in range(2):
        write_simple_sample(tmp_path / "data", f"s{i}", 8, seed=i, **({"source": "static"} if i == 1 else {}))
    return SimpleLayoutDataset(tmp_path / "data", PRE)


def test_cache_matches_direct_encoding_and_trains(tmp_path, encoders, dataset):
    vae, text = encoders
    manifest = precompute_cache(
        dataset, vae, text, tmp_path / "cache", CacheSettings(samples_per_shard=1), progress=False
    )
    assert len(manifest.entries) == 2 and len(manifest.shards) == 2 and manifest.clip_frames == [2, 2, 2, 2]
    cached = CachedLayerDataset(
        tmp_path / "cache", expected_fingerprints=manifest.fingerprints, sample_posterior=False
    )
    sample = cached[1]
    mean, _, per_clip = encode_latents(vae, dataset[1].layers, OFFICIAL)
    torch.testing.assert_close(sample.latents, mean * vae.config.scaling_factor)
    assert per_clip == [2, 2, 2, 2] and sample.latents.shape == (4, 8, 2, 2)
    torch.testing.assert_close(sample.clip("foreground", "alpha"), sample.latents[:, 2:4])
    expected_text = text([PROMPTS["foreground"], PROMPTS["background"], PROMPTS["composite"]]).embeddings[0]
    torch.testing.assert_close(sample.prompt_embeds, expected_text)
    batch = collate_cached([cached[i] for i in range(2)])
    assert batch.latents.shape == (2, 4, 8, 2, 2) and batch.is_static.tolist() == [0.0, 1.0]


def test_posterior_sampling_is_fresh_per_epoch(tmp_path, encoders, dataset):
    vae, text = encoders
    precompute_cache(dataset, vae, text, tmp_path / "cache", progress=False)
    cached = CachedLayerDataset(tmp_path / "cache", seed=0)
    first = cached[0].latents
    torch.testing.assert_close(cached[0].latents, first)
    cached.set_epoch(1)
    assert not torch.equal(cached[0].latents, first)
    mean, std, _ = encode_latents(vae, dataset[0].layers, OFFICIAL)
    noise = first / vae.config.scaling_factor - mean
    assert float((noise / std).std()) == pytest.approx(1.0, abs=0.35)


def test_stale_cache_is_detected_refused_and_rebuilt(tmp_path, encoders, dataset):
    vae, text = encoders
    cache = tmp_path / "cache"
    manifest = precompute_cache(dataset, vae, text, cache, progress=False)
    assert precompute_cache(dataset, vae, text, cache, progress=False).fingerprints == manifest.fingerprints

    other_vae = tiny_vae(seed=1)  # same config, other weights
    with pytest.raises(StaleCacheError, match="the VAE"):
        precompute_cache(dataset, other_vae, text, cache, on_stale="raise", progress=False)
    other_text = LayerPromptEncoder(
        build_tiny_t5_encoder(text.tokenizer.vocab_size, seed=3), text.tokenizer, max_length=8
    )
    expected = cache_fingerprints(dataset, vae, other_text, CacheSettings())
    with pytest.raises(StaleCacheError, match="the text encoder"):
        CachedLayerDataset(cache, expected_fingerprints=expected)
    changed_pre = SimpleLayoutDataset(dataset.root, Preprocess(height=8, width=8, frames=PRE.frames))
    with pytest.raises(StaleCacheError, match="preprocessing"):
        precompute_cache(changed_pre, vae, text, cache, on_stale="raise", progress=False)

    rebuilt = precompute_cache(dataset, other_vae, text, cache, progress=False)
    assert rebuilt.fingerprints["vae"] != manifest.fingerprints["vae"]
    sample = CachedLayerDataset(cache, expected_fingerprints=rebuilt.fingerprints, sample_posterior=False)[0]
    mean, _, _ = encode_latents(other_vae, dataset[0].layers, OFFICIAL)
    torch.testing.assert_close(sample.latents, mean * other_vae.config.scaling_factor)


def test_rejects_layer_embedder_and_records_skips(tmp_path, encoders, dataset):
    vae, text = encoders
    with_embedder = LayerPromptEncoder(
        text.text_encoder, text.tokenizer, max_length=8, layer_embedder=LayerEmbedder(3, 32)
    )
    with pytest.raises(ValueError, match="layer embedder"):
        precompute_cache(dataset, vae, with_embedder, tmp_path / "cache", progress=False)
    (dataset.root / "s1" / "background" / "0003.png").write_bytes(b"corrupt")
    skipping = SimpleLayoutDataset(dataset.root, PRE, on_error="skip")
    manifest = precompute_cache(
        skipping, vae, text, tmp_path / "cache", CacheSettings(encode_mode="per_clip"), progress=False
    )
    assert [e["sample_id"] for e in manifest.entries] == ["s0"]
    assert manifest.skipped[0]["sample_id"] == "s1" and "cannot decode" in manifest.skipped[0]["reason"]


def test_interrupted_rebuild_leaves_no_loadable_cache(tmp_path, encoders, dataset):
    vae, text = encoders
    cache = tmp_path / "cache"
    precompute_cache(dataset, vae, text, cache, CacheSettings(samples_per_shard=1), progress=False)

    class Failing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = text
            self.calls = 0

        def forward(self, prompts):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
            return self.inner(prompts)

    with pytest.raises(KeyboardInterrupt):
        precompute_cache(dataset, vae, Failing(), cache, CacheSettings(samples_per_shard=1), progress=False)
    assert not list(cache.glob(".*.tmp"))
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        CachedLayerDataset(cache)
