"""Layer editing: recompose an output folder's layers (some replaced by your frames) and edit one layer
with the model (keep the foreground and regenerate the background, or the reverse), then recompose."""

from layerflow.compositing import alpha_over

from .compositing import Placement, place
from .edit import EDIT_TASKS, assemble_edit, edit
from .recompose import (
    EditError,
    Replacement,
    load_layers,
    recompose,
    recompose_layers,
    recomposition_check,
)

__all__ = [
    "EDIT_TASKS",
    "EditError",
    "Placement",
    "Replacement",
    "alpha_over",
    "assemble_edit",
    "edit",
    "load_layers",
    "place",
    "recompose",
    "recompose_layers",
    "recomposition_check",
]
