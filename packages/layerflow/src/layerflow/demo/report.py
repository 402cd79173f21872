"""The demo's Markdown report, rendered from the ``report.json`` dict (one source of truth)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Metrics shown per task in the trained-vs-untrained table (when the task has them).
TASK_METRICS: tuple[str, ...] = (
    "recomposition.mae",
    "alpha.iou",
    "alpha.sad",
    "foreground.mae",
    "background.mae",
    "flicker.composite",
)
ADHERENCE: tuple[str, ...] = ("foreground_colour", "foreground_shape", "background_colour")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def targets_table(report: dict[str, Any]) -> str:
    """The issue's targets beside the measured values (trained and untrained), met or not."""
    lines = [
        "| target metric | measured on | trained | untrained | goal | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["targets"]:
        met = "n/a" if row["met"] is None else ("yes" if row["met"] else "no")
        lines.append(
            f"| `{row['metric']}` | {', '.join(row['tasks'])} | {_fmt(row['measured'])} | "
            f"{_fmt(row['untrained'])} | {row['target']} | {met} |"
        )
    return "\n".join(lines) + "\n"


def _task_value(summary: dict[str, Any], name: str) -> float | None:
    if name in ADHERENCE:
        value = summary["adherence"].get(name)
    else:
        value = summary["means"].get(name)
    return None if value is None else float(value)


def render_markdown(report: dict[str, Any], output_dir: Path) -> str:
    settings = report["settings"]
    frames, height, width = (settings["assets"][k] for k in ("num_frames", "height", "width"))
    lines = [
        "# LayerFlow embedded demo report",
        "",
        f"Synthetic layered clips of {frames} frames at {height}x{width}: {settings['num_train']} for "
        f"training, {settings['num_heldout']} held out. Layout: {report['layout']}. All numbers come from "
        "`layerflow.metrics` on the written output folders against the held-out ground truth; the "
        "untrained column is the same pipeline before stage 1 (same VAE, T5, seeds and sampler).",
        "",
        "## Targets",
        "",
        targets_table(report),
        "## Training (loss: mean of the first and last tenth of each stage)",
        "",
        "| stage | trains | steps | first | last |",
        "| --- | --- | --- | --- | --- |",
    ]
    what = {"1": "layer-aware model", "2": "motion LoRA (static clips)", "3": "content LoRA"}
    for stage, entry in report["training"].items():
        lines.append(
            f"| {stage} | {what[stage]} | {entry['steps']} | {entry['first']:.4f} | {entry['last']:.4f} |"
        )
    recon = report["vae_reconstruction_mae"]
    lines += [
        "",
        "## Tiny VAE reconstruction (held-out clips, mean |decode(encode(x)) - x|, 0-1 scale)",
        "",
        "| " + " | ".join(recon) + " |",
        "| " + " | ".join("---" for _ in recon) + " |",
        "| " + " | ".join(f"{v:.4f}" for v in recon.values()) + " |",
        "",
        "## Per task: trained vs untrained (means over held-out samples)",
        "",
    ]
    for task, entry in report["tasks"].items():
        trained, untrained = entry["trained"], entry["untrained"]
        lines += [f"### `{task}`", "", "| metric | trained | untrained |", "| --- | --- | --- |"]
        for name in (*TASK_METRICS, *ADHERENCE):
            value, baseline = _task_value(trained, name), _task_value(untrained, name)
            if value is not None or baseline is not None:
                lines.append(f"| `{name}` | {_fmt(value)} | {_fmt(baseline)} |")
        first = sorted((output_dir / task).iterdir())[0].name
        lines += ["", f"![{task}]({task}/{first}/preview.png)", ""]
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in report["timings_s"].items())
    lines += [f"Timings: {timings}.", ""]
    return "\n".join(lines)
