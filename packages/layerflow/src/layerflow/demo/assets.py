"""The embedded default's frozen components: a tiny CogVideoX VAE trained here and a tiny T5.

Real LayerFlow needs CogVideoX-2B's VAE and T5-XXL. The demo builds stand-ins in seconds to a minute,
never downloads anything, and caches them on disk under a fingerprint of their config (the config,
the caption vocabulary and a format version), so a second run reuses them and any change rebuilds:

    <cache_dir>/assets-<fingerprint>/vae/            AutoencoderKLCogVideoX (safetensors)
                                     text_encoder/   T5EncoderModel (safetensors)
                                     tokenizer/      word tokenizer over the synthetic captions
                                     assets.json     config, fingerprint, VAE ceiling and losses

The VAE is the class the pipeline uses, trained on synthetic clips in the forms the pipeline
encodes them (composite, background, foreground premultiplied onto grey, alpha as a 3-channel clip)
so that ``decode(encode(x))`` is close enough for the layer metrics to mean something. Like
CogVideoX-2B's VAE for real LayerFlow, it is frozen and pretrained: training it to its ceiling takes
longer than the whole demo's CPU budget, so layerflow ships the weights that :func:`train_vae`
produces for the default :class:`DemoAssetConfig` (``pretrained_vae/``, rebuilt with
``python -m layerflow.demo.pretrain``) and uses them whenever a config's VAE recipe
(:meth:`DemoAssetConfig.vae_fingerprint`) matches; any other config trains its VAE here, as
before. Its held-out round trip is the *ceiling* of every layer metric; it is measured, recorded and checked against
:data:`CEILING_TARGETS` (:func:`check_ceiling`). Its ``scaling_factor`` is set so that latents have
unit variance, which the diffusion schedule assumes. The T5 is random (a fixed seed): the
transformer learns to read its embeddings, which only need to tell the caption words apart.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.models.autoencoders.autoencoder_kl_cogvideox import AutoencoderKLCogVideoX
from tqdm.auto import tqdm

from layer_embeddings.tiny import build_tiny_t5_encoder, build_word_tokenizer
from layerflow import codec as rep
from layerflow.atomic import atomic_directory
from layerflow.metrics import alpha_iou as iou
from layerflow.output_policy import register_marker
from layerflow.synthetic import SyntheticConfig, SyntheticGenerator, SyntheticSample

#: Bump when the cached folder's content or the way it is built changes (part of the fingerprint).
ASSET_FORMAT_VERSION = 3
#: The VAE shipped with layerflow (diffusers folder) and its record (``recipe.json``).
PRETRAINED_VAE_DIR = Path(__file__).parent / "pretrained_vae"
PRETRAINED_RECORD = "recipe.json"
#: A shipped folder (the VAE's, or the base's of :mod:`.base`) is replaced only when its record is ours.
register_marker(
    PRETRAINED_RECORD,
    lambda record: any(isinstance(record.get(key), str) for key in ("vae_fingerprint", "base_fingerprint")),
)
#: Config fields that decide only the T5 and the tokenizer, not the VAE's weights.
TEXT_FIELDS = ("text_width", "text_layers", "prompt_tokens")
ASSETS_FILE = "assets.json"
#: The clip kinds the pipeline and the trainer encode with the VAE.
CLIP_KINDS: tuple[str, ...] = ("composite", "background", "foreground", "alpha")
#: The frozen VAE's held-out round trip must be this good, else the layer metrics measure the VAE.
CEILING_TARGETS: dict[str, tuple[str, float]] = {"alpha_iou": (">=", 0.95), "composite_mae": ("<=", 0.03)}


class VaeCeilingError(RuntimeError):
    """The demo's VAE cannot round-trip held-out clips well enough for the demo's targets."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/layerflow/demo`` (``~/.cache/layerflow/demo``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "layerflow" / "demo"


@dataclass(frozen=True)
class DemoAssetConfig:
    """What the tiny VAE and T5 look like and how the VAE is trained.

    Args:
        height, width, num_frames: the clip size the VAE is trained on (the demo's clip size): 4
            frames, 2 latent frames per clip, the token count of 8 frames at 4x temporal compression.
        vae_channels: ``block_out_channels`` of the VAE (3 blocks: 4x spatial compression).
        temporal_compression: the VAE's ``temporal_compression_ratio`` (2 or 4 with 3 blocks): 2,
            because a moving object squeezed 4 frames into one latent is what the tiny VAE
            reconstructs worst (alpha IoU 0.73 vs 0.59 after 200 steps, measured).
        latent_channels: VAE latent channels (the transformer's ``in_channels``).
        vae_steps, vae_batch_size, vae_learning_rate: VAE training length, clips per step, Adam LR
            (5000 steps: about 35 minutes on one thread, hence shipped pretrained).
        kl_weight: weight of the KL term (small: reconstruction matters, the latent stays near N(0, 1)).
        vae_train_samples, vae_eval_samples: synthetic samples (4 clips each) to train / measure on,
            drawn from a seed stream of their own (disjoint from the demo's train and held-out splits).
        text_width, text_layers: T5 ``d_model`` and depth.
        colours, shapes, sizes, textures, motions, patterns, static_probability: the demo's synthetic
            world, a subset of the generator's vocabulary chosen to be learnable in minutes: 4 colours
            far apart in hue, 3 distinct shapes, large plain objects that stand still or translate,
            smooth gradient backgrounds (the tiny VAE blurs fine stripes and checkers).
        prompt_tokens: tokens per layer prompt (the tokenizer's ``model_max_length``): 14 holds the
            longest caption of the demo's world with its "i, " layer prefix and end token; fewer padding
            tokens and a one-layer T5 made text conditioning emerge within 400 steps in a measured probe,
            where 16 tokens and two layers showed none after 200.
        seed: seeds the weights, the clips and the batches.
    """

    height: int = 32
    width: int = 32
    num_frames: int = 4
    vae_channels: tuple[int, ...] = (16, 32, 32)
    temporal_compression: int = 2
    latent_channels: int = 16
    vae_steps: int = 5000
    vae_batch_size: int = 4
    vae_learning_rate: float = 3e-3
    kl_weight: float = 1e-4
    vae_train_samples: int = 256
    vae_eval_samples: int = 8
    text_width: int = 32
    text_layers: int = 1
    prompt_tokens: int = 14
    colours: tuple[str, ...] = ("red", "yellow", "green", "blue")
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    sizes: tuple[str, ...] = ("large",)
    textures: tuple[str, ...] = ("plain",)
    motions: tuple[str, ...] = ("still", "translate")
    patterns: tuple[str, ...] = ("gradient",)
    static_probability: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("height", "width", "num_frames", "latent_channels", "vae_steps", "vae_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"DemoAssetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if len(self.vae_channels) < 2:
            raise ValueError(f"DemoAssetConfig.vae_channels needs >= 2 blocks, got {self.vae_channels}")
        spatial = 2 ** (len(self.vae_channels) - 1)
        if self.temporal_compression not in {2**i for i in range(len(self.vae_channels))}:
            raise ValueError(
                f"DemoAssetConfig.temporal_compression={self.temporal_compression}: a VAE of "
                f"{len(self.vae_channels)} blocks compresses time by a power of two up to {spatial}"
            )
        if self.height % (2 * spatial) or self.width % (2 * spatial):
            raise ValueError(
                f"DemoAssetConfig: {self.height}x{self.width} must be a multiple of {2 * spatial} "
                f"(VAE compression {spatial} x transformer patch 2)"
            )

    def synthetic_config(self) -> SyntheticConfig:
        """The demo's synthetic world (used for the VAE's clips and for the demo's data)."""
        return SyntheticConfig(
            num_frames=self.num_frames,
            height=self.height,
            width=self.width,
            colours=self.colours,
            shapes=self.shapes,
            sizes=self.sizes,
            textures=self.textures,
            motions=self.motions,
            patterns=self.patterns,
            static_probability=self.static_probability,
        )

    def vae_fingerprint(self) -> str:
        """Hash of everything that decides the VAE's weights (the recipe a shipped VAE must match)."""
        recipe = {k: v for k, v in asdict(self).items() if k not in TEXT_FIELDS}
        payload = {"version": ASSET_FORMAT_VERSION, "recipe": recipe}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def fingerprint(self, words: list[str]) -> str:
        """Hash of everything that decides the cached weights."""
        payload = {"version": ASSET_FORMAT_VERSION, "config": asdict(self), "words": sorted(words)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class DemoAssets:
    """The loaded components and what the cache recorded about them."""

    directory: Path
    fingerprint: str
    vae: AutoencoderKLCogVideoX
    text_encoder: Any
    tokenizer: Any
    ceiling: dict[str, Any]
    losses: list[float]
    reused: bool
    #: ``"shipped"`` (layerflow's pretrained VAE) or ``"trained"`` (trained for this config).
    vae_source: str


def caption_words() -> list[str]:
    """The vocabulary of the word tokenizer: every word of the synthetic captions.

    The trainer's tiny model uses the same list, so a model trained by either reads the same ids.
    """
    from layerflow.tiny import tiny_words

    return tiny_words()


def build_vae(config: DemoAssetConfig) -> AutoencoderKLCogVideoX:
    """The untrained tiny VAE (seeded)."""
    torch.manual_seed(config.seed)
    blocks = len(config.vae_channels)
    return AutoencoderKLCogVideoX(
        block_out_channels=tuple(config.vae_channels),
        down_block_types=("CogVideoXDownBlock3D",) * blocks,
        up_block_types=("CogVideoXUpBlock3D",) * blocks,
        latent_channels=config.latent_channels,
        layers_per_block=1,
        norm_num_groups=min(8, *config.vae_channels),
        temporal_compression_ratio=config.temporal_compression,
    )


def sample_clips(sample: SyntheticSample) -> dict[str, torch.Tensor]:
    """One synthetic sample as the four model-range clips the pipeline encodes, ``[T, 3, H, W]``."""
    clips = {
        "composite": sample.composite,
        "background": sample.background,
        "foreground": rep.premultiply_onto_grey(sample.foreground, sample.alpha),
        "alpha": rep.alpha_to_clip(sample.alpha),
    }
    return {kind: rep.to_model_range(clip) for kind, clip in clips.items()}


def _clip_pool(config: DemoAssetConfig, count: int, stream: int) -> dict[str, torch.Tensor]:
    """``count`` samples' clips by kind, ``[N, 3, T, H, W]`` (the VAE's layout)."""
    generator = SyntheticGenerator(config.synthetic_config())
    pool: dict[str, list[torch.Tensor]] = {kind: [] for kind in CLIP_KINDS}
    for index in range(count):
        seed = int(np.random.SeedSequence([config.seed, 7919, stream, index]).generate_state(1)[0])
        for kind, clip in sample_clips(generator.generate(seed)).items():
            pool[kind].append(clip.permute(1, 0, 2, 3))
    return {kind: torch.stack(clips) for kind, clips in pool.items()}


def held_out_clips(config: DemoAssetConfig) -> dict[str, torch.Tensor]:
    """The clips the ceiling is measured on: a seed stream of their own, never trained on."""
    return _clip_pool(config, config.vae_eval_samples, stream=1)


def _alpha_frames(clips: torch.Tensor) -> torch.Tensor:
    """Alpha clips ``[N, 3, T, H, W]`` in model range -> alpha ``[N, T, 1, H, W]`` in [0, 1]."""
    return rep.from_model_range(clips).mean(1, keepdim=True).transpose(1, 2)


@torch.no_grad()
def measure_ceiling(vae: AutoencoderKLCogVideoX, clips: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The VAE round trip ``decode(encode(x))`` (posterior mean) of held-out clips by kind.

    ``mae``: mean absolute error per kind on the [0, 1] scale; ``alpha_iou``: IoU at 0.5 of the
    decoded alpha clip (channel mean) against the true alpha; ``checks``: both against
    :data:`CEILING_TARGETS`.
    """
    vae.eval()
    errors, decoded_alpha = {}, None
    for kind, batch in clips.items():
        decoded = vae.decode(vae.encode(batch).latent_dist.mode()).sample.clamp(-1, 1)
        errors[kind] = float((decoded - batch).abs().mean() / 2)
        if kind == "alpha":
            decoded_alpha = decoded
    if decoded_alpha is None:
        raise ValueError("the VAE ceiling needs alpha clips")
    pairs = zip(_alpha_frames(decoded_alpha), _alpha_frames(clips["alpha"]), strict=True)
    alpha_iou = sum(iou(p, g) for p, g in pairs) / len(decoded_alpha)
    measured = {"alpha_iou": alpha_iou, "composite_mae": errors["composite"]}
    checks = {}
    for name, (op, bound) in CEILING_TARGETS.items():
        value = measured[name]
        checks[name] = {
            "measured": value,
            "target": f"{op} {bound}",
            "met": value >= bound if op == ">=" else value <= bound,
        }
    return {"mae": errors, "alpha_iou": alpha_iou, "checks": checks}


def ceiling_misses(ceiling: dict[str, Any]) -> list[str]:
    """Every unmet ceiling goal as ``"name = value (goal op bound)"``."""
    return [
        f"{name} = {row['measured']:.4f} (goal {row['target']})"
        for name, row in ceiling["checks"].items()
        if not row["met"]
    ]


def check_ceiling(ceiling: dict[str, Any]) -> None:
    """Raise :class:`VaeCeilingError` naming every unmet ceiling goal (call it before any training)."""
    missed = ceiling_misses(ceiling)
    if missed:
        raise VaeCeilingError(
            "the demo VAE's held-out round trip misses its ceiling: "
            + "; ".join(missed)
            + ". Train it longer or wider (DemoAssetConfig.vae_steps / vae_channels), or clear the cache."
        )


@torch.no_grad()
def pin_posterior(vae: AutoencoderKLCogVideoX) -> None:
    """Make ``encode`` deterministic: the log-variance half of the encoder's output is pinned at the
    posterior's floor (-30, std 3e-7), so every posterior draw is its mean.

    A tiny VAE trained briefly keeps a posterior std comparable to the spread of its means; the
    trainer and the pipeline draw from the posterior, so the transformer would learn to denoise
    the VAE's sampling noise instead of the clips.
    """
    conv = vae.encoder.conv_out.conv
    channels = int(vae.config["latent_channels"])
    conv.weight[channels:].zero_()
    if conv.bias is not None:
        conv.bias[channels:].fill_(-30.0)


def train_vae(
    config: DemoAssetConfig, *, progress: bool = True, device: str = "cpu"
) -> tuple[AutoencoderKLCogVideoX, dict[str, Any], list[float]]:
    """Train the tiny VAE; returns it (eval mode, unit-variance scaling), its held-out ceiling and the losses."""
    vae = build_vae(config)
    torch.nn.Module.to(vae, device)  # diffusers' ``to`` wrapper confuses type checkers
    train = torch.cat(list(_clip_pool(config, config.vae_train_samples, stream=0).values())).to(device)
    held_out = {k: v.to(device) for k, v in held_out_clips(config).items()}
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.vae_learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.vae_steps)
    order = torch.Generator().manual_seed(config.seed)
    losses = []
    vae.train()
    for _ in tqdm(range(config.vae_steps), desc="demo VAE", disable=not progress):
        batch = train[torch.randint(len(train), (config.vae_batch_size,), generator=order).to(device)]
        posterior = vae.encode(batch).latent_dist
        noise = torch.randn(posterior.std.shape, generator=order).to(device)
        decoded = vae.decode(posterior.mean + posterior.std * noise).sample
        loss = (decoded - batch).abs().mean() + config.kl_weight * posterior.kl().mean() / batch[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    vae.eval().requires_grad_(False)
    pin_posterior(vae)
    with torch.no_grad():  # unit-variance latents: what the diffusion schedule assumes
        latents = torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in train.split(16)])
    vae.register_to_config(scaling_factor=1.0 / float(latents.std()))
    ceiling = measure_ceiling(vae, held_out)
    return vae.cpu(), ceiling, losses


def load_pretrained_vae(
    config: DemoAssetConfig, directory: Path = PRETRAINED_VAE_DIR
) -> tuple[AutoencoderKLCogVideoX, list[float]] | None:
    """The shipped VAE and its training losses when its recipe is ``config``'s, else ``None``."""
    record_path = directory / PRETRAINED_RECORD
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    if record.get("vae_fingerprint") != config.vae_fingerprint():
        return None
    vae = AutoencoderKLCogVideoX.from_pretrained(directory).eval().requires_grad_(False)
    return vae, [float(x) for x in record["losses"]]


def save_pretrained_vae(
    directory: Path,
    config: DemoAssetConfig,
    vae: AutoencoderKLCogVideoX,
    ceiling: dict[str, Any],
    losses: list[float],
) -> None:
    """Write a VAE trained by :func:`train_vae` as a shippable folder (atomically): weights,
    config and ``recipe.json`` (the recipe's fingerprint and config, the ceiling, the losses).
    An existing ``directory`` is replaced only if it holds a ``recipe.json``."""
    with atomic_directory(directory, overwrite=True, replaces=PRETRAINED_RECORD) as temporary:
        vae.save_pretrained(temporary, safe_serialization=True)
        record = {
            "vae_fingerprint": config.vae_fingerprint(),
            "config": asdict(config),
            "ceiling": ceiling,
            "losses": [round(x, 5) for x in losses],
        }
        (temporary / PRETRAINED_RECORD).write_text(json.dumps(record, indent=1) + "\n")


def _load(directory: Path, fingerprint: str, reused: bool) -> DemoAssets:
    from transformers import PreTrainedTokenizerFast, T5EncoderModel

    record = json.loads((directory / ASSETS_FILE).read_text())
    return DemoAssets(
        directory=directory,
        fingerprint=fingerprint,
        vae=AutoencoderKLCogVideoX.from_pretrained(directory / "vae").eval(),
        text_encoder=T5EncoderModel.from_pretrained(directory / "text_encoder").eval(),
        tokenizer=PreTrainedTokenizerFast.from_pretrained(directory / "tokenizer"),
        ceiling=dict(record["ceiling"]),
        losses=list(record["vae_losses"]),
        reused=reused,
        vae_source=str(record["vae_source"]),
    )


def load_or_build_assets(
    config: DemoAssetConfig | None = None,
    cache_dir: str | Path | None = None,
    *,
    progress: bool = True,
    device: str = "cpu",
) -> DemoAssets:
    """The cached assets of ``config``, built (and cached atomically) when missing or outdated."""
    config = config or DemoAssetConfig()
    words = caption_words()
    fingerprint = config.fingerprint(words)
    directory = Path(cache_dir or default_cache_dir()) / f"assets-{fingerprint}"
    record = directory / ASSETS_FILE
    if record.is_file() and json.loads(record.read_text()).get("fingerprint") == fingerprint:
        return _load(directory, fingerprint, reused=True)
    tokenizer = build_word_tokenizer(words, model_max_length=config.prompt_tokens)
    text_encoder = build_tiny_t5_encoder(
        len(tokenizer), d_model=config.text_width, num_layers=config.text_layers, seed=config.seed
    )
    shipped = load_pretrained_vae(config)
    if shipped is not None:  # measured here all the same: the ceiling is this run's, not a record's
        vae, losses = shipped
        ceiling, source = measure_ceiling(vae, held_out_clips(config)), "shipped"
    else:
        vae, ceiling, losses = train_vae(config, progress=progress, device=device)
        source = "trained"
    with atomic_directory(directory, overwrite=True) as temporary:
        vae.save_pretrained(temporary / "vae", safe_serialization=True)
        text_encoder.save_pretrained(temporary / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(temporary / "tokenizer")
        summary = {
            "fingerprint": fingerprint,
            "config": asdict(config),
            "ceiling": ceiling,
            "vae_source": source,
            "vae_losses": losses,
        }
        (temporary / ASSETS_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return _load(directory, fingerprint, reused=False)
