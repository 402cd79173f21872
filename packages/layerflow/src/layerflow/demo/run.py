"""``python -m layerflow.demo``: the embedded default, end to end on a CPU.

1. data: synthetic layered clips, a train split and a held-out split (``layerflow.synthetic``);
2. assets: the tiny VAE (shipped pretrained; trained here only for a non-default config) and T5
   (built), cached by fingerprint; the VAE's held-out round trip, measured in every run, is the
   ceiling of every layer metric and is checked before any training (:mod:`.assets`);
3. base: the pretrained tiny text-to-video CogVideoX (shipped; trained and cached here only for a
   non-default recipe, :mod:`.base`), loaded into a ``LayerFlowPipeline`` exactly as CogVideoX-2B is
   (stock weights, zero layer embedding) and saved as the trainer's ``model.base``;
4. training: stages 1-3 through the real trainer (``layerflow.training.train``), fine-tuning the base;
5. diagnostics: teacher-forced x0 error by timestep, correct vs shuffled prompts, base vs
   trained (:mod:`.diagnostics`);
6. sampling: all four tasks on held-out captions and held-out layers, with the trained pipeline and,
   for comparison, the base with no LayerFlow training, written by the pipeline's own writers, with
   enlarged previews;
7. metrics: ``layerflow.metrics`` on every output against its held-out sample, then ``report.json``,
   ``report.md`` and ``loss_curves.png`` with the targets beside the measured values (:mod:`.report`).

Layout: the official ``alpha_clip`` representation (alpha as its own clip), the one LayerFlow
released and the one the tiny trainer and pipeline default to; ``latent_offset`` would also need a
transparent VAE trained here, which the demo's time budget leaves out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from layerflow import tasks
from layerflow.atomic import atomic_directory, write_text_atomic
from layerflow.compositing import over
from layerflow.layout import TASKS, LayerLayout
from layerflow.metrics import EvaluationReport, evaluate_output_dir, read_output_dir, read_reference_sample
from layerflow.models import LayerFlowTransformer3DModel
from layerflow.output_policy import PIPELINE_INDEX
from layerflow.pipelines import LayerFlowOutput, LayerFlowPipeline
from layerflow.pipelines.scheduling import make_scheduler
from layerflow.stage_output import StageOutput
from layerflow.synthetic.writers import generate_dataset
from layerflow.tiny import torch_threads
from layerflow.training.schema import MAX_SEED

from .animate import animate_inputs, sample_animate
from .assets import (
    DemoAssetConfig,
    DemoAssets,
    ceiling_misses,
    check_ceiling,
    default_cache_dir,
    load_or_build_assets,
)
from .base import BaseRecipe, load_or_train_base, read_base_record
from .diagnostics import encode_heldout, vae_round_trip, x0_errors
from .report import (
    PREVIEW_FILE,
    ROUND_TRIP_DIR,
    build_report,
    is_finite,
    render_markdown,
    targets_table,
    write_loss_plot,
    write_task_preview,
)

logger = logging.getLogger(__name__)


#: Stage 1's task mix (the trainer normalises it). Alpha is generated in ``generate`` and
#: ``decompose`` and given in ``foreground_to_background``, whose batches teach only the background.
STAGE1_TASKS: Mapping[str, float] = {
    "generate": 0.25,
    "foreground_to_background": 0.1,
    "background_to_foreground": 0.25,
    "decompose": 0.4,
}


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo's size and budget depend on.

    The default is sized for a 2-core CPU with the shipped VAE and base (see :mod:`.assets` and
    :mod:`.base`): 601 s measured on a fresh clone of an idle machine, 664 s with the installs of
    ``nox -s demo``, stage 1 most of it; :meth:`quick` runs every stage with a handful of steps
    for CI (its base is trained in the run); :meth:`cuda` is a larger model trained longer on more
    data of the same world, for a GPU.

    Args:
        base: the recipe of the pretrained text-to-video base the stages fine-tune (its transformer
            size is the recipe's).
        stage_steps, stage_learning_rates: per stage. Stage 1's steps are what limits the targets
            (measured on the shipped base, 16 held out, learning rate 3e-3, CFG on every step: 4000 -> 6000 -> 8000
            steps lift decomposition alpha IoU 0.53 -> 0.68 -> 0.71 and cross-layer IoU 0.53 ->
            0.69 -> 0.71); 6000 at two threads fits the budget. At 4000 steps a learning rate of
            1e-3 / 2e-3 / 3e-3 gave alpha IoU 0.49 / 0.52 / 0.53; batch 4 for 10000 steps (the same
            time as batch 8 for 6000) gave 0.67, shape 0.56 against 0.72.
        stage1_tasks: stage 1's task probabilities (:data:`STAGE1_TASKS`; stages 2 and 3 draw the
            four tasks alike). Measured against the uniform mix on the same base and steps, 16 held
            out: recomposition MAE 0.035 -> 0.033, decomposition alpha IoU 0.728 -> 0.778, shape
            adherence 0.66 -> 0.72, cross-layer IoU 0.71 -> 0.75; every task's cross-layer IoU rose,
            ``foreground_to_background``'s too (0.735 -> 0.743).
        stage1_trains: ``model.stage1_trains``: ``"all"`` (measured on the 14000-step base shipped before, 2000 steps:
            better than the paper's ``"blocks"`` on every target, e.g. cross-layer IoU 0.37 vs 0.33,
            recomposition MAE 0.092 vs 0.120).
        stage1_ema: EMA decay of the stage-1 weights (the export uses the EMA); ``None``: off.
        guidance_interval: the sampling steps that run CFG (fractions, the pipeline's
            ``guidance_interval``): the first half, while the noise is high. Measured on the trained
            model of a uniform stage-1 mix, 16 held out, CFG 3: guided on every step / the first half /
            none, recomposition MAE 0.050 / 0.035 / 0.032, decomposition alpha IoU 0.645 / 0.728 /
            0.738, cross-layer IoU 0.65 / 0.71 / 0.73, foreground shape adherence 0.63 / 0.66 / 0.50
            (the text fixes the shape early; late guidance pulls the layers apart). The unguided
            half also runs one transformer batch instead of two.
        position_mode: the transformer's temporal positions over the concatenated clips:
            ``"continuous"``, the base's own (``"per_clip"``, every clip at the first positions,
            measured far worse: alpha IoU 0.22 against 0.73, cross-layer IoU 0.30 against 0.71).
        snr_shift_scale: the noise schedule's SNR shift: CogVideoX-2B's 3.0 (measured against 1.0 on
            the demo: text read more at mid noise, alpha IoU and adherence slightly higher).
        check_vae_ceiling: stop before training when the VAE misses its ceiling goals; when off, a
            miss is logged as a warning and reported.
        animate_share: share of stage-3 batches that train the ``animate`` task (first frames given,
            see :mod:`.animate`); ``0`` leaves the model untrained for it (then only the
            training-free rows are meaningful). Stage 3 encodes its batches on the fly for it (the
            precompute cache holds whole clips only), which its 50 steps afford.
        num_threads: torch CPU threads for the whole run, fixed rather than the machine's count so
            that a run's numbers do not depend on the machine: 2, the budget machine's cores (stage
            1 at 0.107 s per step against about 0.15 s on one thread, measured on a 2-core machine).
        device: where the models train and sample (``"cpu"`` or ``"cuda"``).
    """

    num_train: int = 256
    num_heldout: int = 16
    stage_steps: tuple[int, int, int] = (6000, 50, 50)
    stage_learning_rates: tuple[float, float, float] = (3e-3, 1e-3, 1e-3)
    stage1_tasks: Mapping[str, float] = field(default_factory=lambda: dict(STAGE1_TASKS))
    stage1_trains: str = "all"
    position_mode: str = "continuous"
    batch_size: int = 8
    inference_steps: int = 20
    guidance_scale: float = 3.0
    guidance_interval: tuple[float, float] = (0.0, 0.5)
    snr_shift_scale: float = 3.0
    base: BaseRecipe = field(default_factory=BaseRecipe)
    stage1_ema: float | None = 0.995
    motion_rank: int = 4
    content_rank: int = 16
    assets: DemoAssetConfig = field(default_factory=DemoAssetConfig)
    check_vae_ceiling: bool = False
    animate_share: float = 0.2
    num_threads: int = 2
    device: str = "cpu"
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        """Every stage and file, minimal steps (CI)."""
        return cls(
            num_train=8,
            num_heldout=2,
            stage_steps=(4, 2, 2),
            batch_size=4,
            inference_steps=2,
            num_threads=1,  # CI shares its cores with other tests
            base=BaseRecipe(
                num_attention_heads=2,
                attention_head_dim=8,
                time_embed_dim=16,
                num_layers=2,
                train_samples=4,
                eval_samples=1,
                steps=4,
                warmup_steps=1,
            ),
            assets=replace(
                DemoAssetConfig(),
                vae_steps=3,
                vae_train_samples=2,
                vae_eval_samples=2,
                vae_channels=(8, 8, 8),
                latent_channels=8,
            ),
        )

    @classmethod
    def cuda(cls) -> DemoSettings:
        """A larger configuration of the same world for a GPU (not sized for, nor run on, the CPU)."""
        return cls(
            num_train=1024,
            num_heldout=32,
            stage_steps=(20000, 1000, 2000),
            stage_learning_rates=(5e-4, 1e-3, 1e-3),
            batch_size=32,
            inference_steps=50,
            base=BaseRecipe(
                num_attention_heads=8,
                attention_head_dim=32,
                time_embed_dim=128,
                num_layers=8,
                train_samples=8192,
                steps=60000,
                batch_size=32,
            ),
            assets=replace(
                DemoAssetConfig(), height=64, width=64, num_frames=8, vae_steps=6000, vae_batch_size=8
            ),
            check_vae_ceiling=True,
        )

    @property
    def geometry(self) -> tuple[int, int, int]:
        """``(frames, height, width)`` of every clip."""
        return self.assets.num_frames, self.assets.height, self.assets.width


@dataclass
class DemoResult:
    """What a run produced: the report (as written to ``report.json``) and every file it wrote."""

    output_dir: Path
    report: dict[str, Any]
    files: list[Path]


# ------------------------------------------------------------------------------------------ steps
def make_data(settings: DemoSettings, root: Path, progress: bool) -> tuple[Path, Path]:
    """Generate (or reuse) the train and held-out splits; returns both roots."""
    generate_dataset(
        root,
        settings.num_train,
        settings.num_heldout,
        settings.assets.synthetic_config(),
        seed=settings.seed,
        layouts=("simple",),
        overwrite=True,
        progress=progress,
    )
    return root / "train", root / "heldout"


def scheduler_for(settings: DemoSettings) -> Any:
    """The CogVideoX-2B DPM++ schedule with the demo's SNR shift (trainer and sampler read it from the base)."""
    scheduler = make_scheduler("dpm")
    return type(scheduler).from_config(scheduler.config, snr_shift_scale=settings.snr_shift_scale)


def save_base(settings: DemoSettings, assets: DemoAssets, base: Path, directory: Path) -> LayerFlowPipeline:
    """The pretrained video base as a layered model, before any LayerFlow training, saved where the
    trainer loads ``model.base``: the stock weights of ``base`` loaded into the LayerFlow transformer as
    CogVideoX-2B's are (the layer embedder starts at zero), around the cached VAE/T5."""
    transformer = LayerFlowTransformer3DModel.from_pretrained(base, position_mode=settings.position_mode)
    pipeline = LayerFlowPipeline(
        tokenizer=assets.tokenizer,
        text_encoder=assets.text_encoder,
        vae=assets.vae,
        transformer=transformer,
        scheduler=scheduler_for(settings),
        layout=LayerLayout.official().to_dict(),
    )
    with atomic_directory(directory, overwrite=True, replaces=PIPELINE_INDEX) as temporary:
        pipeline.save_pretrained(temporary, safe_serialization=True)
    return pipeline


def stage_overrides(
    settings: DemoSettings, stage: int, base: Path, train_root: Path, train_dir: Path, progress: bool
) -> dict[str, Any]:
    """The tiny built-in trainer config, pointed at the demo's base model and data."""
    frames, height, width = settings.geometry
    video = {"kind": "simple", "root": str(train_root)}
    frozen = {**video, "freeze": True}
    sources = {1: [video], 2: [frozen], 3: [{**frozen, "repeat": 2}, video]}[stage]
    steps = settings.stage_steps[stage - 1]
    animate = stage == 3 and settings.animate_share > 0
    others = (1 - settings.animate_share) / len(TASKS) if animate else 1 / len(TASKS)
    objective = (
        dict(settings.stage1_tasks)
        if stage == 1
        else {task: others for task in TASKS} | ({"animate": settings.animate_share} if animate else {})
    )
    return {
        "model": {
            "base": str(base),
            "stage1_trains": settings.stage1_trains,
            "block_interval": 1,  # the LoRAs of stages 2 and 3 go on every block
            "motion_rank": settings.motion_rank,
            "content_rank": settings.content_rank,
            "gradient_checkpointing": False,
        },
        "data": {
            "height": height,
            "width": width,
            "num_frames": frames,
            "precompute": not animate,  # first frames are encoded from the clips' pixels
            "sources": sources,
        },
        "objective": {"tasks": objective},
        "optim": {
            "batch_size": settings.batch_size,
            "learning_rate": settings.stage_learning_rates[stage - 1],
            "lr_warmup_steps": min(50, steps // 10),
            "lr_scheduler": "cosine",
        },
        "run": {
            "max_steps": steps,
            "seed": settings.seed,
            "output_root": str(train_dir),
            "checkpoint_every": steps,
            "keep_checkpoints": 1,
            "ema_decay": settings.stage1_ema if stage == 1 else None,
            "tracker": "none",
            "progress": progress,
            "num_threads": settings.num_threads,
        },
    }


def train_stages(
    settings: DemoSettings, base: Path, train_root: Path, train_dir: Path, progress: bool
) -> dict[int, list[float]]:
    """Stages 1-3 through the real trainer; returns each stage's per-step losses."""
    from layerflow.training import load_config, train

    losses = {}
    with accelerate_device(settings.device):
        for stage in (1, 2, 3):
            config = load_config(
                None, stage, stage_overrides(settings, stage, base, train_root, train_dir, progress)
            )
            losses[stage] = train(config, overwrite=True).losses  # a fresh run, not a resume
    return losses


@contextlib.contextmanager
def accelerate_device(device: str) -> Iterator[None]:
    """Make accelerate (the trainer's engine) train on ``device``: it picks CUDA whenever it sees one."""
    previous = os.environ.get("ACCELERATE_USE_CPU")
    os.environ["ACCELERATE_USE_CPU"] = "true" if device == "cpu" else "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["ACCELERATE_USE_CPU"]
        else:
            os.environ["ACCELERATE_USE_CPU"] = previous


def task_inputs(task: str, sample_dir: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Prompts and condition frames of ``task`` from one held-out sample."""
    clip = read_reference_sample(sample_dir)
    assert clip.foreground is not None and clip.alpha is not None
    assert clip.background is not None and clip.composite is not None
    prompts = dict(clip.prompts)
    conditions: dict[str, torch.Tensor] = {}
    if task == "foreground_to_background":
        conditions["foreground"] = torch.cat([clip.foreground, clip.alpha], dim=1)
    elif task == "background_to_foreground":
        conditions["background"] = clip.background
    elif task == "decompose":
        conditions["composite"] = clip.composite
        prompts.pop("composite", None)
    return prompts, conditions


def run_task(
    pipeline: LayerFlowPipeline,
    settings: DemoSettings,
    task: str,
    sample_dir: Path,
    steps: int,
    seed: int,
    **pipeline_options: Any,
) -> LayerFlowOutput:
    """One task on one held-out sample at the demo's geometry and guidance (``pipeline_options``: e.g. a callback)."""
    prompts, conditions = task_inputs(task, sample_dir)
    return tasks.run(
        pipeline, task, prompts, conditions, task_options(settings, steps, seed), **pipeline_options
    ).output


def task_options(settings: DemoSettings, steps: int, seed: int) -> tasks.TaskOptions:
    """The demo's geometry, guidance and ``steps``, seeded with ``seed``."""
    frames, height, width = settings.geometry
    return tasks.TaskOptions(
        frames=frames,
        height=height,
        width=width,
        steps=steps,
        guidance=settings.guidance_scale,
        guidance_interval=settings.guidance_interval,
        seed=seed,
    )


def preview_rows(task: str, output_dir: Path, sample_dir: Path) -> list[tuple[str, torch.Tensor]]:
    """The rows of a task preview: its input, the generated layers, their recomposition, the truth."""
    _, conditions = task_inputs(task, sample_dir)
    return [(f"input {name}", frames) for name, frames in conditions.items()] + layer_rows(
        output_dir, sample_dir
    )


def animate_preview_rows(output_dir: Path, sample_dir: Path) -> list[tuple[str, torch.Tensor]]:
    """An ``animate`` preview: the given cutout (held for every frame), then as :func:`preview_rows`."""
    _, conditions = animate_inputs(sample_dir)
    rows = layer_rows(output_dir, sample_dir)
    cutout = conditions["foreground"].frames
    return [("given frame 0", cutout.expand(rows[0][1].shape[0], -1, -1, -1)), *rows]


def layer_rows(output_dir: Path, sample_dir: Path) -> list[tuple[str, torch.Tensor]]:
    """The generated layers of an output folder, their recomposition and the true foreground."""
    _, generated = read_output_dir(output_dir)
    truth = read_reference_sample(sample_dir)
    assert generated.foreground is not None and generated.alpha is not None
    assert generated.background is not None and generated.composite is not None
    assert truth.foreground is not None and truth.alpha is not None
    alpha, foreground = generated.alpha, generated.foreground
    return [
        ("foreground", torch.cat([foreground, alpha], dim=1)),
        ("alpha", alpha.expand(-1, 3, -1, -1)),
        ("background", generated.background),
        ("composite", generated.composite),
        ("recomposed", over(foreground, alpha, generated.background)),
        ("true fg", torch.cat([truth.foreground, truth.alpha], dim=1)),
    ]


def round_trip_rows(folder: Path, samples: Sequence[Path], count: int = 3) -> list[tuple[str, torch.Tensor]]:
    """Preview rows of the first held-out samples: truth and VAE round trip, composite and foreground."""
    rows = []
    for index, sample in enumerate(samples[:count]):
        truth = read_reference_sample(sample)
        _, decoded = read_output_dir(folder / sample.name)
        assert truth.foreground is not None and truth.alpha is not None and truth.composite is not None
        assert decoded.foreground is not None and decoded.alpha is not None and decoded.composite is not None
        rows += [
            (f"{index}: truth", truth.composite),
            (f"{index}: via VAE", decoded.composite),
            (f"{index}: true fg", torch.cat([truth.foreground, truth.alpha], dim=1)),
            (f"{index}: fg via VAE", torch.cat([decoded.foreground, decoded.alpha], dim=1)),
        ]
    return rows


def sample_tasks(
    pipeline: LayerFlowPipeline, settings: DemoSettings, heldout: Path, out: Path, label: str, progress: bool
) -> dict[str, list[EvaluationReport]]:
    """All four tasks on every held-out sample, written to ``out/<task>/<id>/``, previewed and evaluated."""
    pipeline.set_progress_bar_config(disable=True)
    samples = sorted(p for p in heldout.iterdir() if p.is_dir())
    reports: dict[str, list[EvaluationReport]] = {task: [] for task in TASKS}
    jobs = [(task, index, sample) for task in TASKS for index, sample in enumerate(samples)]
    for task, index, sample in tqdm(jobs, desc=f"sampling ({label})", disable=not progress):
        seed = settings.seed + index
        result = run_task(pipeline, settings, task, sample, settings.inference_steps, seed)
        target = out / task / sample.name
        result.save(
            target,
            seed=seed,
            settings={
                "model": label,
                "steps": settings.inference_steps,
                "guidance_scale": settings.guidance_scale,
                "guidance_interval": list(settings.guidance_interval),
            },
            overwrite=True,
        )
        write_task_preview(target / PREVIEW_FILE, preview_rows(task, target, sample))
        reports[task].append(evaluate_output_dir(target, reference=sample))
    return reports


# ------------------------------------------------------------------------------------------ main
def run_demo(
    settings: DemoSettings | None = None,
    output_dir: str | Path = "outputs/demo",
    cache_dir: str | Path | None = None,
    *,
    progress: bool = True,
) -> DemoResult:
    """Run the whole demo into ``output_dir``; see the module docstring."""
    settings = settings or DemoSettings()
    with torch_threads(settings.num_threads):
        return _run(settings, Path(output_dir), cache_dir, progress)


def _run(settings: DemoSettings, out: Path, cache_dir: str | Path | None, progress: bool) -> DemoResult:
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    train_root, heldout = make_data(settings, out / "data", progress)
    lap("data")
    assets = load_or_build_assets(settings.assets, cache_dir, progress=progress, device=settings.device)
    if settings.check_vae_ceiling:
        check_ceiling(assets.ceiling)  # before any training: a capped VAE makes every layer metric moot
    elif missed := ceiling_misses(assets.ceiling):
        logger.warning(
            "the demo VAE misses its ceiling (%s): layer metrics are capped by it", "; ".join(missed)
        )
    lap("assets")
    video_base, base_source = load_or_train_base(
        settings.base, assets, settings.assets, Path(cache_dir or default_cache_dir()), progress=progress
    )
    base_record = {
        **(read_base_record(video_base) or {}),
        "source": base_source,
        "directory": str(video_base),
    }
    lap("base")
    base_dir = out / "train" / "base"
    base = save_base(settings, assets, video_base, base_dir)
    losses = train_stages(settings, base_dir, train_root, out / "train", progress)
    lap("training")
    trained_pipeline = LayerFlowPipeline.from_pretrained(StageOutput.of(out / "train", 3).pipeline)
    trained_pipeline.to(settings.device)
    base.to(settings.device)
    samples = sorted(p for p in heldout.iterdir() if p.is_dir())
    latents = encode_heldout(base, samples)
    diagnostics = {
        "base": x0_errors(base, latents, seed=settings.seed),
        "trained": x0_errors(trained_pipeline, latents, seed=settings.seed),
    }
    round_trip = vae_round_trip(base, samples, out / ROUND_TRIP_DIR)
    write_task_preview(out / ROUND_TRIP_DIR / PREVIEW_FILE, round_trip_rows(out / ROUND_TRIP_DIR, samples))
    lap("diagnostics")
    trained = sample_tasks(trained_pipeline, settings, heldout, out, "trained", progress)
    baseline = sample_tasks(base, settings, heldout, out / "base", "base", progress)
    animate = sample_animate(
        {"trained": trained_pipeline, "base": base},
        task_options(settings, settings.inference_steps, settings.seed),
        samples,
        out,
        progress,
        lambda target, sample: write_task_preview(
            target / PREVIEW_FILE, animate_preview_rows(target, sample)
        ),
    )
    lap("sampling_and_metrics")
    curves = {
        f"VAE, {assets.vae_source}": assets.losses,
        **{f"stage {stage}": values for stage, values in losses.items()},
    }
    write_loss_plot(out / "loss_curves.png", curves)
    report = build_report(
        settings, assets, base_record, losses, diagnostics, trained, baseline, round_trip, animate, timings
    )
    if not is_finite(report):
        raise FloatingPointError("the demo report holds a non-finite number; see report.json")
    write_text_atomic(out / "report.json", json.dumps(report, indent=1, allow_nan=False) + "\n")
    write_text_atomic(out / "report.md", render_markdown(report, out))
    files = [out / "report.md", out / "report.json", out / "loss_curves.png"]
    files += sorted(p for task in TASKS for p in (out / task).rglob("*") if p.is_file())
    files.append(out / ROUND_TRIP_DIR / PREVIEW_FILE)
    files += sorted(p for p in (out / "animate").rglob("*") if p.is_file())
    return DemoResult(out, report, files)


def build_parser(prog: str = "python -m layerflow.demo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="The embedded default: synthetic data, three training stages, four tasks, metrics.",
    )
    parser.add_argument(
        "--output-dir", default="outputs/demo", help="where everything goes (default: outputs/demo)"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="tiny VAE/T5 cache (default: ~/.cache/layerflow/demo)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="minimal steps (CI): every stage and file, no quality"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the data, the transformer, training and sampling"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu: the default configuration, sized for 2 cores; cuda: a larger one (DemoSettings.cuda)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m layerflow.demo") -> int:
    """Run the demo from the command line; returns the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # The demo's own bars say what runs; the libraries' per-load bars would bury them.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if not 0 <= args.seed <= MAX_SEED:  # it becomes the training run's run.seed: the same range
        parser.error(f"--seed must be in [0, {MAX_SEED}], got {args.seed}")
    if args.quick:
        settings = DemoSettings.quick()
    else:
        settings = DemoSettings.cuda() if args.device == "cuda" else DemoSettings()
    settings = replace(settings, seed=args.seed, device=args.device)  # the cached VAE/T5 keep their own seed
    started = time.perf_counter()
    result = run_demo(settings, args.output_dir, args.cache_dir, progress=not args.no_progress)
    print()
    print(targets_table(result.report))
    tasks = {task: len(list((result.output_dir / task).iterdir())) for task in TASKS}
    print(f"wrote {len(result.files)} files in {time.perf_counter() - started:.0f} s:")
    print(f"  {result.output_dir / 'report.md'}\n  {result.output_dir / 'report.json'}")
    for task, count in tasks.items():
        print(f"  {result.output_dir / task}/  ({count} samples: manifest.json, PNGs, WebM/MP4, preview.png)")
    return 0
