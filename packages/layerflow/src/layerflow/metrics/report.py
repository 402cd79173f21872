"""Evaluation results that render to JSON and Markdown, per clip and summarised over clips."""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerflow.atomic import write_text_atomic

from .adherence import AdherenceCheck

# name -> (what it measures, "lower" | "higher" is better). One place, used by both renderings.
METRICS: dict[str, tuple[str, str]] = {
    "recomposition.mae": ("mean |composite - (a*fg + (1-a)*bg)|, 0-1 scale", "lower"),
    "recomposition.max_frame": ("recomposition.mae of the worst frame", "lower"),
    "consistency.cross_layer": (
        "IoU per frame of alpha > 0.5 and |composite - background| > 0.25: the layers show one scene",
        "higher",
    ),
    "consistency.cross_layer.reference": ("the same cross-layer IoU on the reference layers", "higher"),
    "alpha.sad": ("alpha SAD / 1000 per frame (DIM)", "lower"),
    "alpha.mse": ("alpha MSE per frame (DIM)", "lower"),
    "alpha.gradient": ("alpha gradient error / 1000 (DIM, sigma 1.4)", "lower"),
    "alpha.connectivity": ("alpha connectivity error / 1000 (DIM, step 0.1)", "lower"),
    "alpha.iou": ("alpha IoU at alpha > 0.5", "higher"),
    "alpha.dtssd": ("alpha temporal coherence dtSSD x 100", "lower"),
    "foreground.mae": ("premultiplied foreground MAE vs reference, 0-1", "lower"),
    "background.mae": ("background MAE vs reference, 0-1", "lower"),
    "flicker.foreground": ("mean |frame t - frame t-1| of the premultiplied foreground", "lower"),
    "flicker.alpha": ("mean |frame t - frame t-1| of alpha", "lower"),
    "flicker.background": ("mean |frame t - frame t-1| of the background", "lower"),
    "flicker.composite": ("mean |frame t - frame t-1| of the composite", "lower"),
}
for _role in ("foreground", "alpha", "background", "composite"):
    METRICS[f"flicker.{_role}.reference"] = (f"the same flicker measure on the reference {_role}", "lower")

# The targets for the embedded demo; reported beside the measured values, never tuned to.
TARGETS: dict[str, tuple[str, float]] = {
    "recomposition.mae": ("<=", 0.05),
    "alpha.iou": (">=", 0.8),
    "adherence.foreground_colour": (">=", 0.9),
    "adherence.foreground_shape": (">=", 0.8),
    "consistency.cross_layer": (">=", 0.7),
}


def _fmt(value: float) -> str:
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.3e}"


def _meets(value: float, target: tuple[str, float]) -> bool:
    op, bound = target
    return value <= bound if op == "<=" else value >= bound


class _Renderable(ABC):
    """A report that renders to a dict (hence JSON) and to Markdown, and saves both atomically."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def to_markdown(self) -> str: ...

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def save(self, directory: str | Path, stem: str = "metrics") -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.md`` into ``directory`` (atomically); returns both paths."""
        directory = Path(directory)
        json_path, markdown_path = directory / f"{stem}.json", directory / f"{stem}.md"
        write_text_atomic(json_path, self.to_json())
        write_text_atomic(markdown_path, self.to_markdown())
        return json_path, markdown_path


@dataclass
class EvaluationReport(_Renderable):
    """Metrics of one output directory. ``per_frame`` holds per-frame series of some metrics (by
    metric name); ``notes`` says which metrics were skipped and why."""

    output_dir: str
    task: str
    reference: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    adherence: list[AdherenceCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_frame: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": self.output_dir,
            "task": self.task,
            "reference": self.reference,
            "metrics": dict(self.metrics),
            "per_frame": {name: list(values) for name, values in self.per_frame.items()},
            "adherence": [
                {"attribute": c.attribute, "expected": c.expected, "measured": c.measured, "match": c.match}
                for c in self.adherence
            ],
            "notes": list(self.notes),
        }

    def to_markdown(self) -> str:
        lines = [f"# Evaluation of `{self.output_dir}`", "", f"Task: `{self.task}`"]
        lines.append(f"Reference: `{self.reference}`" if self.reference else "Reference: none")
        lines += ["", "| metric | value | better | what it measures |", "| --- | --- | --- | --- |"]
        for name, value in self.metrics.items():
            description, better = METRICS[name]
            lines.append(f"| `{name}` | {_fmt(value)} | {better} | {description} |")
        for name, values in self.per_frame.items():
            lines += ["", f"`{name}` per frame: " + " ".join(_fmt(value) for value in values)]
        if self.adherence:
            lines += ["", "| prompt attribute | asked | measured | match |", "| --- | --- | --- | --- |"]
            lines += [
                f"| {c.attribute} | {c.expected} | {c.measured} | {'yes' if c.match else 'no'} |"
                for c in self.adherence
            ]
        if self.notes:
            lines += ["", "Notes:", ""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


@dataclass
class EvaluationSummary(_Renderable):
    """Means over several reports, adherence rates, and the issue's targets beside them."""

    count: int
    means: dict[str, float]
    counts: dict[str, int]
    adherence: dict[str, float]
    adherence_counts: dict[str, int]

    def value(self, name: str) -> float | None:
        if name.startswith("adherence."):
            return self.adherence.get(name.removeprefix("adherence."))
        return self.means.get(name)

    def to_dict(self) -> dict[str, Any]:
        targets = {}
        for name, target in TARGETS.items():
            value = self.value(name)
            targets[name] = {
                "target": f"{target[0]} {target[1]}",
                "measured": value,
                "met": None if value is None else _meets(value, target),
            }
        return {
            "count": self.count,
            "means": dict(self.means),
            "counts": dict(self.counts),
            "adherence": dict(self.adherence),
            "adherence_counts": dict(self.adherence_counts),
            "targets": targets,
        }

    def to_markdown(self) -> str:
        lines = [
            f"# Evaluation summary ({self.count} clips)",
            "",
            "| target | measured | goal | met |",
            "| --- | --- | --- | --- |",
        ]
        for name, target in TARGETS.items():
            value = self.value(name)
            shown = "n/a" if value is None else _fmt(value)
            met = "n/a" if value is None else ("yes" if _meets(value, target) else "no")
            lines.append(f"| `{name}` | {shown} | {target[0]} {target[1]} | {met} |")
        lines += ["", "| metric | mean | clips | better |", "| --- | --- | --- | --- |"]
        for name, value in self.means.items():
            lines.append(f"| `{name}` | {_fmt(value)} | {self.counts[name]} | {METRICS[name][1]} |")
        if self.adherence:
            lines += ["", "| prompt attribute | match rate | clips |", "| --- | --- | --- |"]
            for name, rate in self.adherence.items():
                lines.append(f"| {name} | {rate:.1%} | {self.adherence_counts[name]} |")
        return "\n".join(lines) + "\n"


def summarize(reports: Sequence[EvaluationReport]) -> EvaluationSummary:
    """Mean of every metric over the reports that have it, and the match rate of every attribute."""
    if not reports:
        raise ValueError("summarize needs at least one report")
    values: dict[str, list[float]] = {}
    matches: dict[str, list[bool]] = {}
    for report in reports:
        for name, value in report.metrics.items():
            values.setdefault(name, []).append(value)
        for check in report.adherence:
            matches.setdefault(check.attribute, []).append(check.match)
    means = {name: math.fsum(v) / len(v) for name, v in values.items()}
    rates = {name: sum(v) / len(v) for name, v in matches.items()}
    return EvaluationSummary(
        count=len(reports),
        means=means,
        counts={name: len(v) for name, v in values.items()},
        adherence=rates,
        adherence_counts={name: len(v) for name, v in matches.items()},
    )
