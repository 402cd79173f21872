"""Precompute cache with a tiny CogVideoX VAE and a tiny T5: encoding, reuse, staleness, training reads."""

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX

from layer_embeddings import LayerEmbedder, LayerPromptEncoder
from layer_embeddings.testing import build_tiny_t5_encoder, build_word_tokenizer
from layerflow.codec import ClipCodec
from layerflow.data import (
    CachedLayerDataset,
    CacheSettings,
    FrameSampler,
    Preprocess,
    SimpleLayoutDataset,
    StaleCacheError,
    cache_fingerprints,
    collate_cached,
    encode_sample,
    precompute_cache,
)
from layerflow.data.testing import PROMPTS, write_simple_sample
from layerflow.layout import LayerLayout
from layerflow.models.configs import model_geometry
from layerflow.tiny import tiny_transformer_config

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


def codec_for(vae: AutoencoderKLCogVideoX, layout: LayerLayout = OFFICIAL) -> ClipCodec:
    return ClipCodec(layout, model_geometry(vae.config, tiny_transformer_config()), vae)


@pytest.fixture(scope="module")
def encoders():
    tokenizer = build_word_tokenizer(" ".join(PROMPTS.values()).split(), model_max_length=8)
    text = LayerPromptEncoder(build_tiny_t5_encoder(tokenizer.vocab_size), tokenizer, max_length=8)
    return codec_for(tiny_vae()), text


@pytest.fixture()
def dataset(tmp_path):
    for i in range(2):
        write_simple_sample(tmp_path / "data", f"s{i}", 8, seed=i, **({"source": "static"} if i == 1 else {}))
    return SimpleLayoutDataset(tmp_path / "data", PRE)


def test_cache_matches_direct_encoding_and_trains(tmp_path, encoders, dataset):
    codec, text = encoders
    manifest = precompute_cache(
        dataset, codec, text, tmp_path / "cache", CacheSettings(samples_per_shard=1), progress=False
    )
    assert len(manifest.entries) == 2 and len(manifest.shards) == 2 and manifest.clip_frames == [2, 2, 2, 2]
    cached = CachedLayerDataset(
        tmp_path / "cache", expected_fingerprints=manifest.fingerprints, sample_posterior=False
    )
    sample = cached[1]
    # Oracle: stock vae.encode of each official clip (grey-premultiplied fg, 3-channel alpha, bg, composite).
    layers = dataset[1].layers
    fg, alpha = layers["foreground"].rgb, layers["foreground"].alpha
    clips = [fg * alpha + 0.5 * (1 - alpha), alpha.expand(-1, 3, -1, -1), layers["background"].rgb]
    clips.append(layers["composite"].rgb)
    vae = codec.vae
    means = [vae.encode((c * 2 - 1).permute(1, 0, 2, 3)[None]).latent_dist.mean[0] for c in clips]
    expected = torch.cat(means, dim=1).permute(1, 0, 2, 3) * vae.config.scaling_factor
    torch.testing.assert_close(sample.latents, expected)
    assert sample.latents.shape == (8, 4, 2, 2)
    torch.testing.assert_close(sample.clip("foreground", "alpha"), sample.latents[2:4])
    expected_text = text([PROMPTS["foreground"], PROMPTS["background"], PROMPTS["composite"]]).embeddings[0]
    torch.testing.assert_close(sample.prompt_embeds, expected_text)
    batch = collate_cached([cached[i] for i in range(2)])
    assert batch.latents.shape == (2, 8, 4, 2, 2) and batch.is_static.tolist() == [0.0, 1.0]


def test_posterior_sampling_is_fresh_per_epoch(tmp_path, encoders, dataset):
    codec, text = encoders
    precompute_cache(dataset, codec, text, tmp_path / "cache", progress=False)
    cached = CachedLayerDataset(tmp_path / "cache", seed=0)
    first = cached[0].latents
    torch.testing.assert_close(cached[0].latents, first)
    cached.set_epoch(1)
    assert not torch.equal(cached[0].latents, first)
    posterior, _ = encode_sample(codec, dataset[0].layers)
    mean, std = posterior.mean[0], posterior.std[0]
    noise = first / codec.geometry.scaling_factor - mean
    assert float((noise / std).std()) == pytest.approx(1.0, abs=0.35)


def test_stale_cache_is_detected_refused_and_rebuilt(tmp_path, encoders, dataset):
    codec, text = encoders
    cache = tmp_path / "cache"
    manifest = precompute_cache(dataset, codec, text, cache, progress=False)
    assert precompute_cache(dataset, codec, text, cache, progress=False).fingerprints == manifest.fingerprints

    other_codec = codec_for(tiny_vae(seed=1))  # same config, other weights
    with pytest.raises(StaleCacheError, match="the VAE"):
        precompute_cache(dataset, other_codec, text, cache, on_stale="raise", progress=False)
    joint = codec_for(codec.vae, LayerLayout(OFFICIAL.layers, vae_pass="joint"))
    with pytest.raises(StaleCacheError, match="VAE pass mode"):
        precompute_cache(dataset, joint, text, cache, on_stale="raise", progress=False)
    other_text = LayerPromptEncoder(
        build_tiny_t5_encoder(text.tokenizer.vocab_size, seed=3), text.tokenizer, max_length=8
    )
    expected = cache_fingerprints(dataset, codec, other_text, CacheSettings())
    with pytest.raises(StaleCacheError, match="the text encoder"):
        CachedLayerDataset(cache, expected_fingerprints=expected)
    changed_pre = SimpleLayoutDataset(dataset.root, Preprocess(height=8, width=8, frames=PRE.frames))
    with pytest.raises(StaleCacheError, match="preprocessing"):
        precompute_cache(changed_pre, codec, text, cache, on_stale="raise", progress=False)

    rebuilt = precompute_cache(dataset, other_codec, text, cache, progress=False)
    assert rebuilt.fingerprints["vae"] != manifest.fingerprints["vae"]
    sample = CachedLayerDataset(cache, expected_fingerprints=rebuilt.fingerprints, sample_posterior=False)[0]
    posterior, _ = encode_sample(other_codec, dataset[0].layers)
    torch.testing.assert_close(sample.latents, posterior.mean[0] * other_codec.geometry.scaling_factor)


def test_rejects_layer_embedder_and_records_skips(tmp_path, encoders, dataset):
    codec, text = encoders
    with_embedder = LayerPromptEncoder(
        text.text_encoder, text.tokenizer, max_length=8, layer_embedder=LayerEmbedder(3, 32)
    )
    with pytest.raises(ValueError, match="layer embedder"):
        precompute_cache(dataset, codec, with_embedder, tmp_path / "cache", progress=False)
    (dataset.root / "s1" / "background" / "0003.png").write_bytes(b"corrupt")
    skipping = SimpleLayoutDataset(dataset.root, PRE, on_error="skip")
    manifest = precompute_cache(skipping, codec, text, tmp_path / "cache", CacheSettings(), progress=False)
    assert [e["sample_id"] for e in manifest.entries] == ["s0"]
    assert manifest.skipped[0]["sample_id"] == "s1" and "cannot decode" in manifest.skipped[0]["reason"]


def test_interrupted_rebuild_leaves_no_loadable_cache(tmp_path, encoders, dataset):
    codec, text = encoders
    cache = tmp_path / "cache"
    precompute_cache(dataset, codec, text, cache, CacheSettings(samples_per_shard=1), progress=False)

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
        precompute_cache(dataset, codec, Failing(), cache, CacheSettings(samples_per_shard=1), progress=False)
    assert not list(cache.glob(".*.tmp"))
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        CachedLayerDataset(cache)
