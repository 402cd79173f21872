"""Quality metrics for layered videos: recomposition, alpha matting, temporal and prompt adherence."""

from .adherence import AdherenceCheck, check_adherence
from .components import largest_component
from .evaluate import evaluate_output_dir
from .io import LayeredClip, read_output_dir, read_reference_sample
from .matting import alpha_iou, connectivity_error, dtssd, gradient_error, mse, sad
from .report import METRICS, TARGETS, EvaluationReport, EvaluationSummary, summarize
from .video import cross_layer_iou, mean_absolute_error, recomposition_error, temporal_flicker

__all__ = [
    "METRICS",
    "TARGETS",
    "AdherenceCheck",
    "EvaluationReport",
    "EvaluationSummary",
    "LayeredClip",
    "alpha_iou",
    "check_adherence",
    "connectivity_error",
    "cross_layer_iou",
    "dtssd",
    "evaluate_output_dir",
    "gradient_error",
    "largest_component",
    "mean_absolute_error",
    "mse",
    "read_output_dir",
    "read_reference_sample",
    "recomposition_error",
    "sad",
    "summarize",
    "temporal_flicker",
]
