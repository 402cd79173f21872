"""The demo's report: one dict (``report.json``, the single source of truth), its Markdown, its pictures.

* :func:`build_report` assembles the dict from what the run measured;
* :func:`render_markdown` renders it (targets, VAE ceiling, teacher-forced diagnostics, training,
  per-task tables, previews);
* :func:`write_loss_plot` draws the loss curves and :func:`write_task_preview` one task's input,
  generated layers and recomposition, enlarged so that a person sees the shapes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from layerflow.atomic import atomic_file
from layerflow.layout import TASKS
from layerflow.media.frames import to_uint8
from layerflow.media.preview import over_checkerboard
from layerflow.metrics import METRICS, TARGETS, EvaluationReport, summarize
from layerflow.pipelines.call_checks import guided_steps

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from .assets import DemoAssets

#: Which task's outputs each target is measured on (the issue's wording).
TARGET_TASKS: dict[str, tuple[str, ...]] = {
    "recomposition.mae": ("generate",),  # every layer generated
    "alpha.iou": ("decompose",),  # alpha recovered from the composite
    "adherence.foreground_colour": ("generate", "background_to_foreground"),  # foreground generated
    "adherence.foreground_shape": ("generate", "background_to_foreground"),
    "consistency.cross_layer": TASKS,  # the layers of every task must show one scene
}
#: Metrics shown per task in the trained-vs-base table (when the task has them).
TASK_METRICS: tuple[str, ...] = (
    "recomposition.mae",
    "consistency.cross_layer",
    "consistency.cross_layer.reference",
    "alpha.iou",
    "alpha.sad",
    "foreground.mae",
    "background.mae",
    "flicker.composite",
)
ADHERENCE: tuple[str, ...] = ("foreground_colour", "foreground_shape", "background_colour")
#: The layer each per-task metric measures; a task's condition layers are its input, copied through.
METRIC_LAYERS: dict[str, str] = {
    "alpha.iou": "foreground",
    "alpha.sad": "foreground",
    "foreground.mae": "foreground",
    "foreground_colour": "foreground",
    "foreground_shape": "foreground",
    "background.mae": "background",
    "background_colour": "background",
    "flicker.composite": "composite",
}
CONDITION_LAYERS: dict[str, tuple[str, ...]] = {
    "generate": (),
    "foreground_to_background": ("foreground",),
    "background_to_foreground": ("background",),
    "decompose": ("composite",),
}
#: Where the frozen VAE came from, as the report says it.
VAE_SOURCES: dict[str, str] = {
    "shipped": "The VAE is the one shipped with layerflow, pretrained by the same recipe "
    "(`python -m layerflow.demo.pretrain vae`), as CogVideoX-2B's VAE is for real LayerFlow.",
    "trained": "The VAE was trained in this run (its config differs from the shipped VAE's recipe).",
}
#: Where the held-out truth's VAE round trip is written (one output folder per sample, and a preview).
ROUND_TRIP_DIR = "vae_round_trip"
#: Preview enlargement (nearest neighbour): 32-pixel frames are too small to judge.
PREVIEW_SCALE = 4
PREVIEW_FRAMES = 4


# ------------------------------------------------------------------------------------------ assembly
def loss_summary(losses: list[float]) -> dict[str, float]:
    """Mean loss of the first and the last tenth of a stage (a single-step loss is too noisy)."""
    span = max(1, len(losses) // 10)
    return {"steps": len(losses), "first": sum(losses[:span]) / span, "last": sum(losses[-span:]) / span}


def _better(name: str, trained: float | None, base: float | None) -> bool | None:
    """Whether the trained value beats the base's (higher for IoU and adherence rates)."""
    if trained is None or base is None:
        return None
    higher = name.startswith("adherence") or METRICS.get(name, ("", "lower"))[1] == "higher"
    return trained > base if higher else trained < base


def target_rows(
    trained: dict[str, list[EvaluationReport]],
    base: dict[str, list[EvaluationReport]],
    round_trip: list[EvaluationReport],
) -> list[dict[str, Any]]:
    """One row per target: trained, base, the VAE round trip of the truth (the best any model can
    score through this VAE) and, where the truth has one, the held-out truth's value."""
    rows = []
    ceiling = summarize(round_trip)
    for name, (op, bound) in TARGETS.items():
        tasks = TARGET_TASKS[name]
        measured = summarize([r for t in tasks for r in trained[t]]).value(name)
        baseline = summarize([r for t in tasks for r in base[t]]).value(name)
        truth = summarize([r for t in tasks for r in trained[t]]).value(f"{name}.reference")
        vae = ceiling.value(name)
        met = None if measured is None else (measured <= bound if op == "<=" else measured >= bound)
        rows.append(
            {
                "metric": name,
                "tasks": list(tasks),
                "target": f"{op} {bound}",
                "measured": measured,
                "base": baseline,
                "truth": truth,
                "vae_round_trip": vae,
                "vae_allows": None if vae is None else (vae <= bound if op == "<=" else vae >= bound),
                "met": met,
                "better_than_base": _better(name, measured, baseline),
            }
        )
    return rows


def build_report(
    settings: DataclassInstance,
    assets: DemoAssets,
    base_record: dict[str, Any],
    losses: dict[int, list[float]],
    diagnostics: dict[str, Any],
    trained: dict[str, list[EvaluationReport]],
    base: dict[str, list[EvaluationReport]],
    round_trip: list[EvaluationReport],
    animate: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Everything the run measured, as one JSON-ready dict (``settings``: the run's ``DemoSettings``,
    typed as any dataclass so that the report never imports the runner that imports it;
    ``base_record``: the video base's ``recipe.json`` with its ``source`` and ``directory``)."""
    return {
        "format": "layerflow-demo-report",
        "version": 5,
        "layout": "official alpha_clip",
        "settings": asdict(settings),
        "assets": {
            "directory": str(assets.directory),
            "fingerprint": assets.fingerprint,
            "reused": assets.reused,
            "vae_source": assets.vae_source,
        },
        "vae_ceiling": assets.ceiling,
        "vae_losses": assets.losses,
        "base": base_record,
        "diagnostics": diagnostics,
        "training": {
            str(stage): {**loss_summary(values), "losses": values} for stage, values in losses.items()
        },
        "targets": target_rows(trained, base, round_trip),
        "vae_round_trip": [r.to_dict() for r in round_trip],
        "tasks": {
            task: {
                "trained": summarize(trained[task]).to_dict(),
                "base": summarize(base[task]).to_dict(),
                "samples": [r.to_dict() for r in trained[task]],
            }
            for task in TASKS
        },
        "animate": animate,
        "metric_descriptions": {name: description for name, (description, _) in METRICS.items()},
        "timings_s": timings,
    }


def is_finite(tree: Any) -> bool:
    """Whether every float in a nested dict/list is finite."""
    if isinstance(tree, float):
        return math.isfinite(tree)
    if isinstance(tree, dict):
        return all(is_finite(v) for v in tree.values())
    if isinstance(tree, list):
        return all(is_finite(v) for v in tree)
    return True


# ------------------------------------------------------------------------------------------ markdown
def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _yes_no(flag: bool | None) -> str:
    return "n/a" if flag is None else ("yes" if flag else "no")


def targets_table(report: dict[str, Any]) -> str:
    """The issue's targets beside the measured values (trained, base, truth), met or not."""
    lines = [
        "| target metric | measured on | trained | base | VAE round trip | truth | goal | met | trained better |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["targets"]:
        tasks = "all four tasks" if len(row["tasks"]) == len(TASKS) else ", ".join(row["tasks"])
        lines.append(
            f"| `{row['metric']}` | {tasks} | {_fmt(row['measured'])} | {_fmt(row['base'])} | "
            f"{_fmt(row['vae_round_trip'])} | "
            f"{'' if row['truth'] is None else _fmt(row['truth'])} | {row['target']} | "
            f"{_yes_no(row['met'])} | {_yes_no(row['better_than_base'])} |"
        )
    return "\n".join(lines) + "\n"


def ceiling_table(ceiling: dict[str, Any]) -> str:
    """The frozen VAE's held-out round trip beside its goals."""
    lines = ["| VAE round trip (held out) | measured | goal | met |", "| --- | --- | --- | --- |"]
    for name, row in ceiling["checks"].items():
        lines.append(f"| `{name}` | {_fmt(row['measured'])} | {row['target']} | {_yes_no(row['met'])} |")
    return "\n".join(lines) + "\n"


def diagnostics_table(diagnostics: dict[str, Any]) -> str:
    """x0 error per timestep, correct and shuffled prompts, base and trained."""
    base, trained = diagnostics["base"], diagnostics["trained"]
    lines = [
        "| t | base, correct | base, shuffled | trained, correct | trained, shuffled |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in trained["correct"]:
        values = (
            base["correct"][t],
            base["shuffled"][t],
            trained["correct"][t],
            trained["shuffled"][t],
        )
        lines.append(f"| {t} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


#: What the video base's record measures, as the report says it.
BASE_QUALITY: dict[str, str] = {
    "foreground_colour": "colour adherence of the object (foreground-over-grey clips)",
    "foreground_shape": "shape adherence of the object (foreground-over-grey clips)",
    "background_colour": "colour adherence (background clips)",
    "temporal_consistency": "IoU of the object between consecutive frames",
    "temporal_consistency_truth": "the same on the held-out truth",
}
BASE_SOURCES: dict[str, str] = {
    "shipped": "shipped with layerflow (`python -m layerflow.demo.pretrain base`)",
    "cached": "trained earlier for this recipe and cached",
    "trained": "trained in this run (its recipe differs from the shipped base's)",
}


#: What bounds each target, beside the measured figure of that component (see :func:`limits_section`).
TARGET_LIMITS: dict[str, tuple[str, ...]] = {
    "recomposition.mae": ("vae", "budget"),
    "alpha.iou": ("vae", "budget"),
    "adherence.foreground_colour": ("vae", "base_colour", "budget"),
    "adherence.foreground_shape": ("vae", "base_shape", "budget"),
    "consistency.cross_layer": ("vae", "base_temporal", "budget"),
}


#: A stage-1 loss that drops less than this share from one tenth of the run to the last is flat.
TREND_FLAT = 0.005


def _stage1_trend(losses: list[float]) -> float | None:
    """Relative drop of the mean stage-1 loss from the second-to-last tenth to the last tenth."""
    span = len(losses) // 10
    if span < 1:
        return None
    before, last = losses[-2 * span : -span], losses[-span:]
    return (sum(before) / span - sum(last) / span) / max(sum(before) / span, 1e-12)


def _budget_evidence(trend: float | None) -> str:
    """What the end of stage 1's loss curve says about its budget."""
    if trend is None:
        return "stage-1 loss trend n/a"
    if trend > TREND_FLAT:
        return f"stage-1 loss still {100 * trend:.1f}% lower in its last tenth than in the tenth before"
    return (
        f"stage-1 loss flat at the end of its cosine decay ({-100 * trend:+.1f}% in its last tenth): "
        "more steps show only with a longer schedule (`DemoSettings.stage_steps`)"
    )


def limits_section(report: dict[str, Any]) -> str:
    """Each missed target beside the measured figures of the components that bound it: the VAE's
    round trip, the base's own quality and whether stage 1 was still improving when it stopped."""
    quality = report["base"].get("quality", {})
    trend = _stage1_trend(report["training"]["1"]["losses"])
    evidence = {
        "base_colour": f"the base's own colour adherence {quality.get('foreground_colour', float('nan')):.2f}",
        "base_shape": f"the base's own shape adherence {quality.get('foreground_shape', float('nan')):.2f}",
        "base_temporal": f"the base's temporal consistency {quality.get('temporal_consistency', float('nan')):.2f} "
        f"(truth {quality.get('temporal_consistency_truth', float('nan')):.2f})",
        "budget": "fine-tuning budget: " + _budget_evidence(trend),
    }
    missed = [row for row in report["targets"] if row["met"] is False]
    if not missed:
        return "Every target is met.\n"
    lines = [
        "| missed target | measured | goal | what bounds it (measured in this run) |",
        "| --- | --- | --- | --- |",
    ]
    for row in missed:
        evidence["vae"] = _vae_evidence(row)
        bounds = "; ".join(evidence[name] for name in TARGET_LIMITS.get(row["metric"], ("budget",)))
        lines.append(f"| `{row['metric']}` | {_fmt(row['measured'])} | {row['target']} | {bounds} |")
    return "\n".join(lines) + "\n"


def _vae_evidence(row: dict[str, Any]) -> str:
    """What the VAE round trip of the held-out truth scores on a target, and whether it allows the goal."""
    value = row.get("vae_round_trip")
    if value is None:
        return "VAE round trip: n/a"
    verdict = (
        "the VAE allows the goal"
        if row.get("vae_allows")
        else "**the VAE alone misses the goal**: no model scores better through it"
    )
    return f"the held-out truth through the VAE scores {value:.3f} ({verdict})"


def base_section(base: dict[str, Any]) -> str:
    """Where the base came from, what it is and how good it is on its own (single clips)."""
    recipe = base.get("recipe", {})
    losses = base.get("losses", [])
    lines = [
        "A stock `CogVideoXTransformer3DModel` trained as a text-to-video model on single clips of the "
        f"synthetic world (composites, foregrounds over grey, backgrounds), never on layered samples: "
        f"{recipe.get('num_layers')} blocks, {recipe.get('num_attention_heads')} x "
        f"{recipe.get('attention_head_dim')} wide, {recipe.get('steps')} steps of "
        f"{recipe.get('batch_size')} videos of {recipe.get('clips_per_video')} demo clips; "
        f"{BASE_SOURCES.get(base.get('source', ''), base.get('source', ''))}. "
        + (f"Loss {losses[0]:.4f} -> {losses[-1]:.4f}. " if losses else "")
        + "Its own quality on held-out captions (stock `CogVideoXPipeline`, single clips):",
        "",
        "| base quality | measured |",
        "| --- | --- |",
    ]
    for name, value in base.get("quality", {}).items():
        lines.append(f"| {BASE_QUALITY.get(name, name)} | {_fmt(value)} |")
    return "\n".join(lines) + "\n"


def _task_value(summary: dict[str, Any], name: str) -> float | None:
    value = summary["adherence"].get(name) if name in ADHERENCE else summary["means"].get(name)
    return None if value is None else float(value)


def sampling_sentence(settings: dict[str, Any]) -> str:
    """How every task was sampled: steps, CFG scale and the steps it ran on."""
    steps, scale = settings["inference_steps"], settings["guidance_scale"]
    start, stop = settings["guidance_interval"]
    guided = guided_steps((start, stop), steps)
    where = (
        "every step"
        if len(guided) == steps
        else f"steps {guided.start + 1}-{guided.stop} only"
        if guided
        else "no step"
    )
    return (
        f"Sampling: {steps} DPM++ steps, classifier-free guidance {scale:g} on {where} "
        f"(`guidance_interval` ({start:g}, {stop:g})), the same for the trained model and the base."
    )


def render_markdown(report: dict[str, Any], output_dir: Path) -> str:
    settings = report["settings"]
    frames, height, width = (settings["assets"][k] for k in ("num_frames", "height", "width"))
    diagnostics = report["diagnostics"]
    lines = [
        "# LayerFlow embedded demo report",
        "",
        f"Synthetic layered clips of {frames} frames at {height}x{width}: {settings['num_train']} for "
        f"training, {settings['num_heldout']} held out. Layout: {report['layout']}. All numbers come from "
        "`layerflow.metrics` on the written output folders against the held-out ground truth; the "
        "base column is the pretrained video base run on the layered layout with no LayerFlow training "
        "(same VAE, T5, seeds and sampler): what the three stages add. The VAE round trip column is the "
        "held-out truth encoded and decoded by the frozen VAE, scored the same way: no model can beat "
        "it through this VAE. The truth column is the same metric on the held-out layers themselves.",
        "",
        sampling_sentence(settings),
        "",
        "## Targets",
        "",
        targets_table(report),
        "## What limits the missed targets",
        "",
        limits_section(report),
        "## The pretrained video base",
        "",
        base_section(report["base"]),
        "## The VAE ceiling",
        "",
        "No layer can be better than the frozen VAE's round trip `decode(encode(x))` of the held-out clips "
        "(alpha IoU at 0.5 of the alpha clip; MAE on the 0-1 scale), measured in this run. "
        + VAE_SOURCES[report["assets"]["vae_source"]],
        "",
        ceiling_table(report["vae_ceiling"]),
        "The targets' *VAE round trip* column is the same ceiling measured the way the targets are: "
        "every layer of the held-out samples encoded and decoded through the layout's codec exactly as "
        f"generated latents are decoded, written to `{ROUND_TRIP_DIR}/` and scored by the same metrics. "
        "The clips' first rows below: the truth, and what the VAE gives back.",
        "",
        f"![VAE round trip]({ROUND_TRIP_DIR}/{PREVIEW_FILE})",
        "",
        "## Teacher-forced diagnostics (task `generate`, held-out samples)",
        "",
        "The true latents noised at timestep t; the transformer's v turned into x0; mean squared error "
        "against the true latents over the generated clips. *Shuffled*: the same inputs with another "
        "sample's prompts: a model that reads its text is worse with them. Predicting x0 = 0 scores the "
        f"latent variance, {diagnostics['trained']['latent_variance']:.4f}.",
        "",
        diagnostics_table(diagnostics),
        "## Training (loss: mean of the first and last tenth of each stage)",
        "",
        training_table(report["training"]),
        "## Per task: trained vs base (means over held-out samples)",
        "",
        f"Previews: {PREVIEW_SCALE}x nearest-neighbour, {PREVIEW_FRAMES} frames per row; the task's input, "
        "then the generated layers (foreground over a checkerboard) and the recomposition "
        "`alpha * foreground + (1 - alpha) * background`, then the held-out truth.",
        "",
    ]
    lines += [task_section(task, entry, output_dir) for task, entry in report["tasks"].items()]
    lines += [
        "## Animate a cutout (`animate`: the foreground's first frame given)",
        "",
        animate_section(report["animate"]),
    ]
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in report["timings_s"].items())
    lines += [f"Timings: {timings}.", ""]
    return "\n".join(lines)


#: The animate table's columns: metric of :mod:`.animate` -> heading.
ANIMATE_COLUMNS: dict[str, str] = {
    "first_frame.foreground_mae": "frame-0 colour error (lower)",
    "first_frame.alpha_iou": "frame-0 alpha IoU",
    "motion": "moves as its caption says",
    "consistency.cross_layer": "cross-layer IoU",
}


def animate_section(animate: dict[str, Any]) -> str:
    """The ``animate`` rows (trained, training-free splice, base) and each row's first preview."""
    lines = [
        "Each held-out sample's first foreground frame (its RGBA cutout) is given; every layer is "
        "generated from the sample's prompts. *Trained*: the model of stage 3, which trained the task on "
        "a share of its batches, splicing the clean first-frame latents; *training-free splice*: the "
        "first-frame latents re-noised to every step's timestep, the mode for models not trained for "
        "it (the official checkpoints); the base was never trained for it.",
        "",
        "| row | " + " | ".join(ANIMATE_COLUMNS.values()) + " |",
        "| --- |" + " --- |" * len(ANIMATE_COLUMNS),
    ]
    for label, row in animate.items():
        cells = [_fmt(row["means"].get(name)) for name in ANIMATE_COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for label, row in animate.items():
        first = row["sample_ids"][0]
        lines += [f"{label}: ![animate, {label}]({row['folder']}/{first}/{PREVIEW_FILE})", ""]
    return "\n".join(lines) + "\n"


def training_table(training: dict[str, Any]) -> str:
    """The loss curves picture and, per stage, what it trains and its first/last loss."""
    what = {"1": "layer-aware model", "2": "motion LoRA (static clips)", "3": "content LoRA"}
    lines = [
        "![loss curves](loss_curves.png)",
        "",
        "| stage | trains | steps | first | last |",
        "| --- | --- | --- | --- | --- |",
    ]
    for stage, entry in training.items():
        lines.append(
            f"| {stage} | {what[stage]} | {entry['steps']} | {entry['first']:.4f} | {entry['last']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def task_section(task: str, entry: dict[str, Any], output_dir: Path) -> str:
    """One task's trained-vs-base metric table and the first held-out sample's previews."""
    trained, untrained = entry["trained"], entry["base"]
    lines = [
        f"### `{task}`",
        "",
        "| metric | trained | base | trained better |",
        "| --- | --- | --- | --- |",
    ]
    for name in (*TASK_METRICS, *ADHERENCE):
        value, baseline = _task_value(trained, name), _task_value(untrained, name)
        if value is None and baseline is None:
            continue
        key = f"adherence.{name}" if name in ADHERENCE else name
        if METRIC_LAYERS.get(name) in CONDITION_LAYERS[task]:
            verdict = "input layer"  # the task's condition, the same for both models
        elif value == baseline:
            verdict = "tie"
        else:
            verdict = _yes_no(_better(key, value, baseline))
        lines.append(f"| `{name}` | {_fmt(value)} | {_fmt(baseline)} | {verdict} |")
    first = sorted(p.name for p in (output_dir / task).iterdir())[0]
    lines += [
        "",
        f"Trained: ![{task}]({task}/{first}/{PREVIEW_FILE}) base: "
        f"![{task} base](base/{task}/{first}/{PREVIEW_FILE})",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ pictures
PREVIEW_FILE = "layers_4x.png"
_LABEL_WIDTH = 84
_INK = (30, 30, 30)


def _save_png(path: str | os.PathLike[str], image: Image.Image) -> Path:
    with atomic_file(path) as temporary:
        image.save(temporary, format="PNG")
    return Path(path)


def write_task_preview(
    path: str | os.PathLike[str], rows: Sequence[tuple[str, torch.Tensor]], scale: int = PREVIEW_SCALE
) -> Path:
    """Labelled rows of ``[T, C, H, W]`` clips (RGBA over a checkerboard), ``PREVIEW_FRAMES`` frames each,
    enlarged ``scale`` times with nearest-neighbour so single pixels stay visible."""
    if not rows:
        raise ValueError("a preview needs at least one row")
    frames, _, height, width = rows[0][1].shape
    count = min(PREVIEW_FRAMES, frames)
    picks = [round(i * (frames - 1) / max(count - 1, 1)) for i in range(count)]
    cell_h, cell_w, gap = height * scale, width * scale, 4
    image = Image.new(
        "RGB", (_LABEL_WIDTH + count * (cell_w + gap), len(rows) * (cell_h + gap) - gap), (255, 255, 255)
    )
    draw = ImageDraw.Draw(image)
    for row, (label, clip) in enumerate(rows):
        shown = over_checkerboard(clip[picks], cell=4)
        big = F.interpolate(shown, scale_factor=scale, mode="nearest")
        top = row * (cell_h + gap)
        draw.text((4, top + cell_h // 2 - 6), label, fill=_INK)
        for column, frame in enumerate(to_uint8(big)):
            image.paste(Image.fromarray(frame, mode="RGB"), (_LABEL_WIDTH + column * (cell_w + gap), top))
    return _save_png(path, image)


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _draw_curve(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, values: list[float]
) -> None:
    """One panel: the raw loss in grey, a moving average in blue, y from 0 to the maximum."""
    left, top, right, bottom = box
    x0, x1, y0, y1 = left + 36, right - 8, top + 20, bottom - 24
    peak = max(max(values, default=1.0), 1e-8)
    draw.rectangle((x0, y0, x1, y1), outline=_INK)
    draw.text((x0, top + 4), f"{title} ({len(values)} steps)", fill=_INK)
    draw.text((left + 2, y0 - 4), f"{peak:.2g}", fill=_INK)
    draw.text((left + 2, y1 - 8), "0", fill=_INK)
    draw.text((x1 - 30, y1 + 6), "step", fill=_INK)
    span = max(len(values) - 1, 1)
    smooth = _moving_average(values, max(1, len(values) // 25))
    for series, colour, width in ((values, (190, 190, 190), 1), (smooth, (40, 90, 200), 2)):
        points = [(x0 + (x1 - x0) * i / span, y1 - (y1 - y0) * v / peak) for i, v in enumerate(series)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=width)


def write_loss_plot(
    path: str | os.PathLike[str], curves: dict[str, list[float]], size: tuple[int, int] = (320, 200)
) -> Path:
    """The loss curves side by side, one panel each (PNG)."""
    width, height = size
    image = Image.new("RGB", (width * len(curves), height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for index, (title, values) in enumerate(curves.items()):
        _draw_curve(draw, (index * width, 0, (index + 1) * width, height), title, values)
    return _save_png(path, image)
