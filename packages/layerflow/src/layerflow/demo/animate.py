"""The demo's ``animate`` rows: a held-out sample's first foreground frame (its RGBA cutout) in, a
layered clip out, by the trained model (trained splice), the trained model with the training-free
splice, and the base (training-free: it was never trained for the task).

Scored against what the synthetic world knows about each held-out clip:

* ``first_frame.foreground_mae`` / ``first_frame.alpha_iou``: frame 0 of the generated foreground
  against the given cutout (colour under the alpha, on the 0-1 scale; alpha IoU at 0.5);
* ``motion``: 1 when the object then moves as its caption says (the alpha's centroid travels at
  least :data:`MOTION_PIXELS` in the caption's direction and less across it, or stays within it for
  a still object), else 0; ``None`` when the caption names another motion;
* ``consistency.cross_layer``: do foreground, background and composite show one scene (as for the
  other tasks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from layerflow import tasks
from layerflow.conditions import first_frame_only
from layerflow.metrics import alpha_iou, evaluate_output_dir, read_output_dir, read_reference_sample
from layerflow.pipelines import LayerFlowPipeline
from layerflow.synthetic.attributes import parse_caption

#: Row label -> (model, first-frame splice).
ROWS: dict[str, tuple[str, str]] = {
    "trained": ("trained", "trained"),
    "trained, training-free splice": ("trained", "training_free"),
    "base, training-free splice": ("base", "training_free"),
}
#: Centroid travel (pixels over the clip) that counts as moving; a still object stays below it.
MOTION_PIXELS = 1.5
#: Unit steps of the caption's directions, image axes (x right, y down).
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
METRICS = ("first_frame.foreground_mae", "first_frame.alpha_iou", "motion", "consistency.cross_layer")


def animate_inputs(sample_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Every layer's prompt and the foreground's first frame (straight RGBA) of a held-out sample."""
    clip = read_reference_sample(sample_dir)
    assert clip.foreground is not None and clip.alpha is not None
    cutout = torch.cat([clip.foreground[0], clip.alpha[0]], dim=0)
    return dict(clip.prompts), {"foreground": first_frame_only(cutout)}


def centroid_path(alpha: Tensor) -> Tensor:
    """``[T, 1, H, W]`` -> ``[T, 2]``: the (x, y) centroid of ``alpha > 0.5`` per frame (NaN when empty)."""
    mask = (alpha[:, 0] > 0.5).float()
    ys, xs = torch.meshgrid(
        torch.arange(mask.shape[1], dtype=torch.float32),
        torch.arange(mask.shape[2], dtype=torch.float32),
        indexing="ij",
    )
    area = mask.sum(dim=(1, 2))
    return torch.stack([(mask * xs).sum(dim=(1, 2)) / area, (mask * ys).sum(dim=(1, 2)) / area], dim=1)


def motion_matches(alpha: Tensor, caption: str) -> float | None:
    """1.0 when the matte moves as ``caption`` says (see the module docs), 0.0 when not, ``None``
    when the caption is not a synthetic one or names a motion other than still/translate."""
    attributes = parse_caption(caption)
    if attributes is None or attributes.motion not in ("still", "translate"):
        return None
    path = centroid_path(alpha)
    if bool(path.isnan().any()):
        return 0.0  # the object vanished in some frame
    travel = path[-1] - path[0]
    if attributes.motion == "still":
        return float(travel.norm() < MOTION_PIXELS)
    along = torch.tensor(DIRECTIONS[str(attributes.direction)])
    forward = float(travel @ along)
    across = float((travel - forward * along).norm())
    return float(forward >= MOTION_PIXELS and across < forward)


def score(output_dir: Path, sample_dir: Path) -> dict[str, float | None]:
    """The module's metrics of one written ``animate`` output against its held-out sample."""
    _, clip = read_output_dir(output_dir)
    truth = read_reference_sample(sample_dir)
    assert clip.foreground is not None and clip.alpha is not None
    assert truth.foreground is not None and truth.alpha is not None
    given_alpha = truth.alpha[:1]
    colour_error = (clip.foreground[:1] * clip.alpha[:1] - truth.foreground[:1] * given_alpha).abs().mean()
    evaluated = evaluate_output_dir(output_dir)
    return {
        "first_frame.foreground_mae": float(colour_error),
        "first_frame.alpha_iou": alpha_iou(clip.alpha[:1], given_alpha),
        "motion": motion_matches(clip.alpha, truth.prompts.get("foreground", "")),
        "consistency.cross_layer": evaluated.metrics.get("consistency.cross_layer"),
    }


def mean_scores(rows: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """Per metric, the mean over the samples that have it (``None`` when none has)."""
    means: dict[str, float | None] = {}
    for name in METRICS:
        values = [row[name] for row in rows if row.get(name) is not None]
        means[name] = sum(values) / len(values) if values else None  # type: ignore[arg-type]
    return means


def sample_animate(
    pipelines: dict[str, LayerFlowPipeline],
    options: tasks.TaskOptions,
    samples: Sequence[Path],
    out: Path,
    progress: bool,
    write_preview: Callable[[Path, Path], Any],
) -> dict[str, Any]:
    """Every :data:`ROWS` row on every held-out sample: written to ``out/<row>/<id>/``, previewed
    (``write_preview(folder, sample)``), scored; returns per row the mean and the per-sample scores."""
    results: dict[str, Any] = {}
    jobs = [(label, index, sample) for label in ROWS for index, sample in enumerate(samples)]
    per_row: dict[str, list[dict[str, float | None]]] = {label: [] for label in ROWS}
    for label, index, sample in tqdm(jobs, desc="sampling (animate)", disable=not progress):
        model, mode = ROWS[label]
        prompts, conditions = animate_inputs(sample)
        seeded = replace(options, seed=options.seed + index, first_frame_mode=mode)
        result = tasks.run(pipelines[model], "animate", prompts, conditions, seeded)
        target = out / row_folder(label) / sample.name
        result.settings["model"] = model
        result.save(target, seed=seeded.seed, overwrite=True)
        write_preview(target, sample)
        per_row[label].append(score(target, sample))
    for label, rows in per_row.items():
        results[label] = {
            "means": mean_scores(rows),
            "samples": rows,
            "sample_ids": [sample.name for sample in samples],
            "folder": row_folder(label),
        }
    return results


def row_folder(label: str) -> str:
    """The output folder of a row, below the demo's output folder."""
    return "animate/" + label.replace(", ", "-").replace(" ", "-")
