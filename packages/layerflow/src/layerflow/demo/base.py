"""The demo's pretrained base: a tiny text-to-video CogVideoX, what CogVideoX-2B is to LayerFlow.

LayerFlow does not learn video from scratch: it fine-tunes a pretrained video model, whose temporal
attention (the same object at the same place in the next frames) carries over to the layer clips
concatenated along time. The demo needs the same start, so layerflow ships a tiny stock
``CogVideoXTransformer3DModel`` trained here as a plain text-to-video model on **single clips** of the
synthetic world only: composites, foregrounds over grey and backgrounds, static and moving, each with
its caption, never a layered sample. A base video is as long (in latent frames) as the demo's layered
sequence (``clips_per_video`` demo clips: foreground, alpha, background and composite), so its
temporal positions cover every position LayerFlow feeds it.

Everything the base sees goes through stock diffusers: ``CogVideoXPipeline.encode_prompt`` for the
text (the empty prompt is the unconditional one, as in CogVideoX), ``CogVideoXPipeline`` for
sampling. The frozen demo VAE was trained on demo-length clips, so a base video is encoded and
decoded one demo clip at a time (the per-clip VAE pass of the demo's layout): ``clips_per_video``
clips of ``latent_frames_per_clip`` latents each.

Shipped as ``pretrained_base/`` (stock transformer folder + ``recipe.json``: the recipe's
fingerprint, the recipe, training losses and the base's measured quality), made by
``python -m layerflow.demo.pretrain base``, used by the demo whenever its recipe fingerprint
matches; any other recipe is trained and cached by the demo (:func:`load_or_train_base`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXTransformer3DModel
from diffusers.pipelines.cogvideo.pipeline_cogvideox import CogVideoXPipeline
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from layerflow import codec as rep
from layerflow.atomic import atomic_directory
from layerflow.metrics import alpha_iou
from layerflow.metrics.adherence import background_colour, foreground_colour, foreground_shape
from layerflow.output_policy import register_marker
from layerflow.synthetic import SyntheticGenerator
from layerflow.synthetic.attributes import parse_caption

from .assets import PRETRAINED_RECORD, DemoAssetConfig, DemoAssets, caption_words

#: Bump when the way a base is built or recorded changes (part of the fingerprint).
BASE_FORMAT_VERSION = 1
PRETRAINED_BASE_DIR = Path(__file__).parent / "pretrained_base"
BASE_RECORD = PRETRAINED_RECORD
#: Single-clip kinds a text-to-video model sees: no layered sample, no alpha matte.
BASE_KINDS: tuple[str, ...] = ("composite", "foreground", "background")
#: A pixel of a foreground-over-grey clip is "object" when a channel leaves grey by this much.
OBJECT_THRESHOLD = 0.2
#: Losses are recorded as means over this many steps.
LOSS_WINDOW = 100
CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_RECORD = "checkpoint.json"
register_marker(
    CHECKPOINT_RECORD,
    lambda record: isinstance(record.get("fingerprint"), str) and isinstance(record.get("step"), int),
)


@dataclass(frozen=True)
class BaseRecipe:
    """How the tiny base video model looks and is trained.

    Args:
        num_attention_heads, attention_head_dim, time_embed_dim, num_layers: the transformer,
            8 x 16 = 128 wide and 4 blocks (1.7 M parameters, about 0.15 s per batch-8 step on one CPU
            thread). Wider than a patch: a token carries a 2 x 2 patch of 16 latent channels (64
            values); at 64 wide and 6 blocks the loss after 4000 steps was 0.16, at 128 wide 0.094.
        clips_per_video: demo clips per base video; 4 = the demo layout's foreground, alpha,
            background and composite clips, so the base has seen every temporal position.
        train_samples, eval_samples: synthetic samples (three single clips each) to train on and to
            measure on, from seed streams of their own (disjoint from the demo's and the VAE's).
        steps, batch_size, learning_rate, warmup_steps, ema_decay: AdamW with linear warmup and a
            cosine decay; the saved weights are the EMA after ``steps`` steps.
        schedule_steps: length of the cosine decay (``None``: ``steps``, decaying to zero). Longer
            than ``steps``: a run stopped part-way along a longer schedule (its first ``steps`` steps
            equal those of the longer run). The shipped base decays fully over 30000 steps: against
            14000 steps stopped on a 20000-step schedule, shape adherence 0.31 -> 0.50 and a
            1200-step decompose-only fine-tune's held-out alpha IoU 0.29 -> 0.46 (random weights: 0.37).
        text_dropout: share of captions replaced by the empty prompt (CFG's unconditional one).
        snr_shift_scale: the noise schedule's SNR shift (CogVideoX-2B's 3.0, as the demo).
        seed: weights, clips, batches, noise.
    """

    num_attention_heads: int = 8
    attention_head_dim: int = 16
    time_embed_dim: int = 128
    num_layers: int = 4
    clips_per_video: int = 4
    train_samples: int = 2048
    eval_samples: int = 16
    steps: int = 30000
    schedule_steps: int | None = None
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 500
    ema_decay: float = 0.999
    text_dropout: float = 0.1
    snr_shift_scale: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "num_attention_heads",
            "attention_head_dim",
            "time_embed_dim",
            "num_layers",
            "clips_per_video",
            "train_samples",
            "eval_samples",
            "steps",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"BaseRecipe.{name} must be >= 1, got {getattr(self, name)}")
        if self.schedule_steps is not None and self.schedule_steps < self.steps:
            raise ValueError(f"BaseRecipe.schedule_steps={self.schedule_steps} must be >= steps={self.steps}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"BaseRecipe.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.text_dropout < 1:
            raise ValueError(f"BaseRecipe.text_dropout must be in [0, 1), got {self.text_dropout}")

    def fingerprint(self, assets: DemoAssetConfig) -> str:
        """Hash of everything that decides the base's weights: this recipe and the frozen VAE/T5."""
        payload = {
            "version": BASE_FORMAT_VERSION,
            "recipe": asdict(self),
            "assets": assets.fingerprint(caption_words()),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def transformer_config(recipe: BaseRecipe, assets: DemoAssetConfig) -> dict[str, Any]:
    """The stock ``CogVideoXTransformer3DModel`` config of the base."""
    vae_scale = 2 ** (len(assets.vae_channels) - 1)
    latent_frames = recipe.clips_per_video * latent_frames_per_clip(assets)
    return {
        "num_attention_heads": recipe.num_attention_heads,
        "attention_head_dim": recipe.attention_head_dim,
        "time_embed_dim": recipe.time_embed_dim,
        "num_layers": recipe.num_layers,
        "in_channels": assets.latent_channels,
        "out_channels": assets.latent_channels,
        "text_embed_dim": assets.text_width,
        "max_text_seq_length": assets.prompt_tokens,
        "sample_height": assets.height // vae_scale,
        "sample_width": assets.width // vae_scale,
        "sample_frames": (latent_frames - 1) * assets.temporal_compression + 1,
        "temporal_compression_ratio": assets.temporal_compression,
    }


def latent_frames_per_clip(assets: DemoAssetConfig) -> int:
    """Latent frames of one demo clip through the causal VAE (first frame alone, then groups)."""
    return (assets.num_frames - 1) // assets.temporal_compression + 1


def build_base_transformer(recipe: BaseRecipe, assets: DemoAssetConfig) -> CogVideoXTransformer3DModel:
    """The untrained base (seeded)."""
    torch.manual_seed(recipe.seed)
    return CogVideoXTransformer3DModel(**transformer_config(recipe, assets))


# ------------------------------------------------------------------------------------------ data
def base_clips(
    recipe: BaseRecipe, assets: DemoAssetConfig, count: int, stream: int
) -> tuple[torch.Tensor, list[str]]:
    """``count`` samples as single clips ``[3 * count, 3, T, H, W]`` (model range) and their captions.

    Each sample of the demo's world, rendered ``clips_per_video`` demo clips long, gives three clips:
    its composite, its foreground premultiplied onto grey (the form the demo's layout encodes) and
    its background, each captioned with its own caption.
    """
    world = assets.synthetic_config()
    generator = SyntheticGenerator(
        type(world)(**{**asdict(world), "num_frames": assets.num_frames * recipe.clips_per_video})
    )
    clips: list[torch.Tensor] = []
    captions: list[str] = []
    for index in range(count):
        seed = int(np.random.SeedSequence([recipe.seed, 104729, stream, index]).generate_state(1)[0])
        sample = generator.generate(seed)
        frames = {
            "composite": sample.composite,
            "foreground": rep.premultiply_onto_grey(sample.foreground, sample.alpha),
            "background": sample.background,
        }
        for kind in BASE_KINDS:
            clips.append(rep.to_model_range(frames[kind]).permute(1, 0, 2, 3))
            captions.append(sample.prompts[kind])
    return torch.stack(clips), captions


@torch.no_grad()
def encode_videos(vae: Any, videos: torch.Tensor, clip_frames: int, batch: int = 64) -> torch.Tensor:
    """Videos ``[N, 3, T, H, W]`` -> scaled latents ``[N, F, C, h, w]``, one ``clip_frames`` clip at a time."""
    scale = float(vae.config["scaling_factor"])
    out = []
    for chunk in videos.split(batch):
        pieces = [vae.encode(part).latent_dist.mode() for part in chunk.split(clip_frames, dim=2)]
        out.append((torch.cat(pieces, dim=2) * scale).permute(0, 2, 1, 3, 4))
    return torch.cat(out)


@torch.no_grad()
def decode_videos(vae: Any, latents: torch.Tensor, clip_latents: int) -> torch.Tensor:
    """Scaled latents ``[N, F, C, h, w]`` -> frames ``[N, T, 3, H, W]`` in [0, 1], one clip at a time."""
    scale = float(vae.config["scaling_factor"])
    video = latents.permute(0, 2, 1, 3, 4) / scale
    pieces = [vae.decode(part).sample for part in video.split(clip_latents, dim=2)]
    return rep.from_model_range(torch.cat(pieces, dim=2).clamp(-1, 1)).permute(0, 2, 1, 3, 4)


def stock_pipeline(assets: DemoAssets, transformer: CogVideoXTransformer3DModel, recipe: BaseRecipe) -> Any:
    """The base as a stock ``CogVideoXPipeline`` (tiny T5, demo VAE, DPM++ with the recipe's SNR shift)."""
    from layerflow.pipelines.scheduling import make_scheduler

    stock = make_scheduler("dpm")
    # typed as "maybe a (scheduler, kwargs) tuple"; it is a scheduler without return_unused_kwargs
    scheduler: Any = type(stock).from_config(stock.config, snr_shift_scale=recipe.snr_shift_scale)
    pipeline = CogVideoXPipeline(
        tokenizer=assets.tokenizer,
        text_encoder=assets.text_encoder,
        vae=assets.vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def encode_captions(pipeline: Any, captions: list[str], max_length: int, batch: int = 256) -> torch.Tensor:
    """Captions -> T5 embeddings ``[N, S, D]`` exactly as the stock pipeline encodes a prompt."""
    parts = [
        pipeline.encode_prompt(
            captions[i : i + batch], do_classifier_free_guidance=False, max_sequence_length=max_length
        )[0]
        for i in range(0, len(captions), batch)
    ]
    return torch.cat(parts)


# ------------------------------------------------------------------------------------------ training
def _learning_rate(recipe: BaseRecipe, step: int) -> float:
    """Linear warmup, then a cosine decay to zero (``step`` 0-based)."""
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    length = recipe.schedule_steps or recipe.steps
    progress = (step - recipe.warmup_steps) / max(length - recipe.warmup_steps, 1)
    return recipe.learning_rate * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _step_generator(recipe: BaseRecipe, step: int) -> torch.Generator:
    state = np.random.SeedSequence([recipe.seed, 15485863, step]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _save_checkpoint(
    directory: Path,
    fingerprint: str,
    step: int,
    model: torch.nn.Module,
    ema: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    losses: list[float],
) -> None:
    """Everything a resume needs, as safetensors + JSON, written atomically."""
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v.contiguous() for k, v in ema.items()}
    order = {id(p): name for name, p in model.named_parameters()}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            tensors[f"optim.{order[id(param)]}.{key}"] = value.contiguous()
    with atomic_directory(directory, overwrite=True, replaces=CHECKPOINT_RECORD) as temporary:
        save_file(tensors, str(temporary / CHECKPOINT_FILE))
        record = {"fingerprint": fingerprint, "step": step, "losses": losses}
        (temporary / CHECKPOINT_RECORD).write_text(json.dumps(record) + "\n")


def _load_checkpoint(
    directory: Path,
    fingerprint: str,
    model: torch.nn.Module,
    ema: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> tuple[int, list[float]]:
    """Restore a checkpoint of the same recipe; ``(0, [])`` when there is none (another recipe's is ignored)."""
    record_path = directory / CHECKPOINT_RECORD
    if not record_path.is_file():
        return 0, []
    record = json.loads(record_path.read_text())
    if record.get("fingerprint") != fingerprint:
        return 0, []
    tensors = load_file(str(directory / CHECKPOINT_FILE))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for key, value in ema.items():
        value.copy_(tensors[f"ema.{key}"])
    for name, param in model.named_parameters():
        state = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.rsplit(".", 1)[0] == f"optim.{name}"}
        if state:
            optimizer.state[param] = state
    return int(record["step"]), [float(x) for x in record["losses"]]


def train_base(
    recipe: BaseRecipe,
    assets: DemoAssets,
    assets_config: DemoAssetConfig,
    *,
    progress: bool = True,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 2000,
) -> tuple[CogVideoXTransformer3DModel, list[float]]:
    """Train the base (v-prediction MSE, the demo's DDPM schedule); returns the EMA weights and the
    per-step losses. With ``checkpoint_dir`` a run resumes exactly from its last checkpoint."""
    fingerprint = recipe.fingerprint(assets_config)
    model = build_base_transformer(recipe, assets_config).train()
    pipeline = stock_pipeline(assets, model, recipe)
    videos, captions = base_clips(recipe, assets_config, recipe.train_samples, stream=0)
    latents = encode_videos(assets.vae, videos, assets_config.num_frames)
    text = encode_captions(pipeline, captions, assets_config.prompt_tokens)
    empty = encode_captions(pipeline, [""], assets_config.prompt_tokens)
    del videos
    scheduler = pipeline.scheduler
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    start, losses = 0, list[float]()
    if checkpoint_dir is not None:
        start, losses = _load_checkpoint(checkpoint_dir, fingerprint, model, ema, optimizer)
    bar = tqdm(
        range(start, recipe.steps), desc="demo base", disable=not progress, initial=start, total=recipe.steps
    )
    for step in bar:
        generator = _step_generator(recipe, step)
        index = torch.randint(len(latents), (recipe.batch_size,), generator=generator)
        clean = latents[index]
        prompts = text[index].clone()
        dropped = torch.rand(recipe.batch_size, generator=generator) < recipe.text_dropout
        prompts[dropped] = empty
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (recipe.batch_size,), generator=generator
        )
        noise = torch.randn(clean.shape, generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        target = scheduler.get_velocity(clean, noise, timesteps)
        prediction = model(noisy, prompts, timesteps, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(prediction, target)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(recipe, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for key, value in model.state_dict().items():
                ema[key].lerp_(value, 1 - recipe.ema_decay)
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-LOSS_WINDOW:]):.4f}")
        if checkpoint_dir is not None and (step + 1) % checkpoint_every == 0 and step + 1 < recipe.steps:
            _save_checkpoint(checkpoint_dir, fingerprint, step + 1, model, ema, optimizer, losses)
    model.load_state_dict(ema)
    return model.eval().requires_grad_(False), losses


# ------------------------------------------------------------------------------------------ quality
def _object_mask(frames: torch.Tensor) -> torch.Tensor:
    """``[T, 1, H, W]`` 0/1: where a foreground-over-grey clip ``[T, 3, H, W]`` leaves grey."""
    return ((frames - 0.5).abs().amax(dim=1, keepdim=True) > OBJECT_THRESHOLD).float()


def _consistency(mask: torch.Tensor) -> float:
    """Mean IoU of the object mask between consecutive frames (1 = the object stays one object)."""
    return alpha_iou(mask[1:], mask[:-1])


@torch.no_grad()
def measure_base(
    recipe: BaseRecipe,
    assets: DemoAssets,
    assets_config: DemoAssetConfig,
    transformer: CogVideoXTransformer3DModel,
    *,
    steps: int = 20,
    guidance_scale: float = 3.0,
    progress: bool = False,
) -> dict[str, Any]:
    """The base's single-clip quality on held-out captions, sampled with the stock pipeline.

    Foreground clips (over grey, where the object is readable from pixels): colour and shape
    adherence of the object and temporal consistency (IoU of the object mask between consecutive
    frames; the truth's value beside it). Background clips: colour adherence. Composites are not
    scored: their object cannot be told from a gradient background without the layers.
    """
    pipeline = stock_pipeline(assets, transformer, recipe)
    videos, captions = base_clips(recipe, assets_config, recipe.eval_samples, stream=1)
    clip_latents = latent_frames_per_clip(assets_config)
    latent_frames = recipe.clips_per_video * clip_latents
    truth = rep.from_model_range(videos).permute(0, 2, 1, 3, 4)
    scores: dict[str, list[float]] = {
        "foreground_colour": [],
        "foreground_shape": [],
        "background_colour": [],
        "temporal_consistency": [],
        "temporal_consistency_truth": [],
    }
    for index in tqdm(range(len(captions)), desc="base quality", disable=not progress):
        kind = BASE_KINDS[index % len(BASE_KINDS)]
        if kind == "composite":
            continue
        latents = pipeline(
            captions[index],
            num_frames=(latent_frames - 1) * assets_config.temporal_compression + 1,
            height=assets_config.height,
            width=assets_config.width,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            use_dynamic_cfg=False,
            generator=torch.Generator().manual_seed(recipe.seed + index),
            output_type="latent",
            max_sequence_length=assets_config.prompt_tokens,
        ).frames
        frames = decode_videos(assets.vae, latents, clip_latents)[0]
        asked = parse_caption(captions[index])
        assert asked is not None
        if kind == "background":
            scores["background_colour"].append(float(background_colour(frames) == asked.background_colour))
            continue
        mask = _object_mask(frames)
        scores["foreground_colour"].append(float(foreground_colour(frames, mask) == asked.colour))
        scores["foreground_shape"].append(float(foreground_shape(mask) == asked.shape))
        scores["temporal_consistency"].append(_consistency(mask))
        scores["temporal_consistency_truth"].append(_consistency(_object_mask(truth[index])))
    return {name: float(np.mean(values)) for name, values in scores.items() if values}


# ------------------------------------------------------------------------------------------ files
def loss_means(losses: list[float]) -> list[float]:
    """Per-``LOSS_WINDOW``-step means (what ``recipe.json`` keeps)."""
    return [round(float(np.mean(losses[i : i + LOSS_WINDOW])), 5) for i in range(0, len(losses), LOSS_WINDOW)]


def save_pretrained_base(
    directory: Path,
    recipe: BaseRecipe,
    assets_config: DemoAssetConfig,
    transformer: CogVideoXTransformer3DModel,
    quality: dict[str, Any],
    losses: list[float],
) -> None:
    """Write the base as a stock transformer folder plus ``recipe.json``, atomically; an existing
    ``directory`` is replaced only if it holds a ``recipe.json`` (a folder this wrote)."""
    with atomic_directory(directory, overwrite=True, replaces=BASE_RECORD) as temporary:
        transformer.save_pretrained(temporary, safe_serialization=True)
        record = {
            "base_fingerprint": recipe.fingerprint(assets_config),
            "recipe": asdict(recipe),
            "assets_fingerprint": assets_config.fingerprint(caption_words()),
            "quality": quality,
            "loss_window": LOSS_WINDOW,
            "losses": loss_means(losses),
        }
        (temporary / BASE_RECORD).write_text(json.dumps(record, indent=1) + "\n")


def read_base_record(directory: Path) -> dict[str, Any] | None:
    """``recipe.json`` of a base folder, or ``None`` when there is none."""
    path = directory / BASE_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def find_base(recipe: BaseRecipe, assets_config: DemoAssetConfig, cache_dir: Path) -> Path | None:
    """The shipped base if it is this recipe's, else this recipe's cached one, else ``None``."""
    fingerprint = recipe.fingerprint(assets_config)
    for directory in (PRETRAINED_BASE_DIR, cache_dir / f"base-{fingerprint}"):
        record = read_base_record(directory)
        if record is not None and record.get("base_fingerprint") == fingerprint:
            return directory
    return None


def load_or_train_base(
    recipe: BaseRecipe,
    assets: DemoAssets,
    assets_config: DemoAssetConfig,
    cache_dir: Path,
    *,
    progress: bool = True,
) -> tuple[Path, str]:
    """The folder of ``recipe``'s base and where it came from (``"shipped"``, ``"cached"``,
    ``"trained"``): trained here and cached under ``cache_dir/base-<fingerprint>/`` when missing."""
    found = find_base(recipe, assets_config, cache_dir)
    if found is not None:
        return found, "shipped" if found == PRETRAINED_BASE_DIR else "cached"
    transformer, losses = train_base(recipe, assets, assets_config, progress=progress)
    quality = measure_base(recipe, assets, assets_config, transformer)
    directory = cache_dir / f"base-{recipe.fingerprint(assets_config)}"
    save_pretrained_base(directory, recipe, assets_config, transformer, quality, losses)
    return directory, "trained"
