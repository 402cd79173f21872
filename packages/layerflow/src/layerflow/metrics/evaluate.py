"""``evaluate_output_dir``: every metric that applies to one pipeline output directory.

Which reference comparisons make sense depends on the task: a layer the task *generates freely*
has no ground truth (any plausible background for a given foreground is right), so only layers
the task recovers from its input (decomposition) or receives as its condition (fidelity check) are
compared with the reference.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from layerflow.editing import recomposition_check

from . import matting
from .adherence import check_adherence
from .io import LayeredClip, read_output_dir, read_reference_sample
from .report import EvaluationReport
from .video import cross_layer_iou, mean_absolute_error, temporal_flicker

# Layers of the output that have a ground truth in the reference, per task (``animate`` is given first
# frames only and ``recompose`` recombines earlier layers: neither output layer is a reference's).
REFERENCE_LAYERS: dict[str, tuple[str, ...]] = {
    "animate": (),
    "recompose": (),
    "generate": (),
    "foreground_to_background": ("foreground",),
    "background_to_foreground": ("background",),
    "decompose": ("foreground", "background"),
}
ALPHA_METRICS = {
    "alpha.sad": matting.sad,
    "alpha.mse": matting.mse,
    "alpha.gradient": matting.gradient_error,
    "alpha.connectivity": matting.connectivity_error,
    "alpha.iou": matting.alpha_iou,
}


def _flicker_layers(clip: LayeredClip) -> dict[str, Tensor]:
    layers: dict[str, Tensor] = {}
    if clip.foreground is not None and clip.alpha is not None:
        layers["foreground"] = clip.foreground * clip.alpha  # colour under alpha = 0 is undefined
        layers["alpha"] = clip.alpha
    for role in ("background", "composite"):
        if (layer := getattr(clip, role)) is not None:
            layers[role] = layer
    return layers


def evaluate_output_dir(output_dir: str | Path, reference: str | Path | None = None) -> EvaluationReport:
    """Evaluate one output directory of the pipeline, optionally against a simple-layout sample.

    Always: recomposition error, per frame and its mean and worst frame (when foreground, background
    and composite are present: :func:`layerflow.editing.recomposition_check`), cross-layer IoU (do
    the matte and the composite show the object at the same place; the reference's beside it), temporal
    flicker of every layer, and prompt adherence when the prompts are synthetic captions. With
    ``reference`` (one sample folder, same frames and size): alpha SAD/MSE/gradient/connectivity/IoU/
    dtSSD and layer MAE for the layers the task recovers or is conditioned on, and the reference's
    own flicker beside the output's.
    """
    # 1. Read and check everything before computing anything.
    manifest, clip = read_output_dir(output_dir)
    task = manifest.task
    ref = read_reference_sample(reference) if reference is not None else None
    if ref is not None and ref.size() != clip.size():
        raise ValueError(
            f"reference {reference} has (frames, height, width) {ref.size()}, the output {output_dir} has {clip.size()}"
        )
    report = EvaluationReport(str(output_dir), task, None if reference is None else str(reference))
    metrics, notes = report.metrics, report.notes
    frames = clip.size()[0]

    # 2. Recomposition: the layers composited again against the folder's own composite, per frame.
    if (
        clip.composite is not None
        and clip.foreground is not None
        and clip.alpha is not None
        and clip.background is not None
    ):
        per_frame = recomposition_check(output_dir)
        report.per_frame["recomposition.mae"] = per_frame
        metrics["recomposition.mae"] = sum(per_frame) / len(per_frame)
        metrics["recomposition.max_frame"] = max(per_frame)
        metrics["consistency.cross_layer"] = cross_layer_iou(clip.alpha, clip.composite, clip.background)
    else:
        notes.append("recomposition and cross-layer IoU: need foreground, background and composite layers")
    if ref is not None and ref.alpha is not None and ref.composite is not None and ref.background is not None:
        metrics["consistency.cross_layer.reference"] = cross_layer_iou(
            ref.alpha, ref.composite, ref.background
        )

    # 3. Reference comparisons for the layers with a ground truth.
    if ref is not None:
        for role in REFERENCE_LAYERS[task]:
            if role == "foreground":
                if (
                    clip.alpha is None
                    or ref.alpha is None
                    or clip.foreground is None
                    or ref.foreground is None
                ):
                    notes.append("alpha metrics: the output or the reference has no foreground")
                    continue
                for name, metric in ALPHA_METRICS.items():
                    metrics[name] = metric(clip.alpha, ref.alpha)
                if frames >= 2:
                    metrics["alpha.dtssd"] = matting.dtssd(clip.alpha, ref.alpha)
                metrics["foreground.mae"] = mean_absolute_error(
                    clip.foreground * clip.alpha, ref.foreground * ref.alpha
                )
            elif clip.background is not None and ref.background is not None:
                metrics["background.mae"] = mean_absolute_error(clip.background, ref.background)
            else:
                notes.append("background MAE: the output or the reference has no background")
        if not REFERENCE_LAYERS[task]:
            notes.append(
                f"reference: task {task!r} generates every layer freely, so no layer has a ground truth"
            )

    # 4. Temporal flicker, with the reference's beside it.
    if frames >= 2:
        for name, layer in _flicker_layers(clip).items():
            metrics[f"flicker.{name}"] = temporal_flicker(layer)
        if ref is not None:
            for name, layer in _flicker_layers(ref).items():
                metrics[f"flicker.{name}.reference"] = temporal_flicker(layer)
    else:
        notes.append("temporal flicker and dtSSD: need at least 2 frames")

    # 5. Prompt adherence (synthetic captions only); reference prompts fill roles without one.
    prompts = {**(ref.prompts if ref is not None else {}), **clip.prompts}
    report.adherence = check_adherence(prompts, clip.foreground, clip.alpha, clip.background)
    if not report.adherence:
        notes.append("prompt adherence: no prompt in the synthetic caption grammar (or no layer to check)")
    return report
