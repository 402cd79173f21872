"""The LayerFlow layer-prompt convention: ``"<index>, <description>"``.

LayerFlow tells layers apart in text by a numeric prefix (``"0, a red fox"`` for the foreground,
``"1, ..."`` for the background, ``"2, ..."`` for the blended video). Keeping the formatting in one
function keeps training data, inference prompts and converted checkpoints in agreement.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PREFIX = re.compile(r"^(\d+), (.*)$", re.DOTALL)


def _check_index(index: object, num_layers: int | None) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"layer index must be an int, got {type(index).__name__} ({index!r})")
    if index < 0:
        raise ValueError(f"layer index must be >= 0, got {index}")
    if num_layers is not None and index >= num_layers:
        raise ValueError(f"layer index {index} is out of range for {num_layers} layers (0..{num_layers - 1})")
    return index


def format_layer_prompt(index: int, text: str, *, num_layers: int | None = None) -> str:
    """Return ``"<index>, <text>"``, the prompt form LayerFlow was trained on.

    Args:
        index: the layer's prompt index (0 = foreground, 1 = background, 2 = blended in LayerFlow).
        text: the layer description; surrounding whitespace is stripped.
        num_layers: when given, ``index`` must be smaller than it.
    """
    _check_index(index, num_layers)
    if not isinstance(text, str):
        raise TypeError(f"prompt text for layer {index} must be a str, got {type(text).__name__} ({text!r})")
    return f"{index}, {text.strip()}"


def parse_layer_prompt(prompt: str) -> tuple[int, str]:
    """Split ``"<index>, <text>"`` back into ``(index, text)``; the inverse of :func:`format_layer_prompt`."""
    if not isinstance(prompt, str):
        raise TypeError(f"layer prompt must be a str, got {type(prompt).__name__}")
    match = _PREFIX.match(prompt)
    if match is None:
        raise ValueError(f"{prompt!r} is not a layer prompt of the form '<index>, <description>'")
    return int(match.group(1)), match.group(2)


def format_layer_prompts(texts: Sequence[str | None]) -> list[str | None]:
    """Format one prompt per layer, the list position being the layer index; ``None`` stays ``None``.

    ``None`` marks an unconditional (empty) layer prompt, which the encoder treats specially.
    """
    if isinstance(texts, str):
        raise TypeError("expected one prompt per layer (a list of str), got a single str")
    return [None if text is None else format_layer_prompt(i, text) for i, text in enumerate(texts)]
