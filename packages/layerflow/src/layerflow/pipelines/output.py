"""The pipeline's output type: per-layer frames, latents and settings, and the folder it writes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import BaseOutput

from layerflow.media.output import DEFAULT_FORMATS, AlphaMode, OutputLayer, write_output_dir


@dataclass
class LayerFlowOutput(BaseOutput):
    """Per-layer frames and the latents they were decoded from.

    Attributes:
        layers: layer name -> frames. ``"pt"``: ``[B, T, C, H, W]`` float in [0, 1]; ``"np"``:
            ``[B, T, H, W, C]``. Transparent layers are straight-alpha RGBA (C = 4) whenever the layout
            carries alpha, opaque layers RGB. Empty for ``output_type="latent"``.
        latents: ``[B, F, C, h, w]``, the full latent sequence in layout (official) frame order,
            condition latents included (17 frames for the RGBA fg2bg / bg2fg variants).
        task: the task that produced them.
        roles: layer name -> role (``"foreground"``, ``"background"``, ``"composite"``).
        prompts: layer name -> the prompt it was generated with (prompted layers only).
        settings: the sampling settings used (steps, guidance scale, dynamic CFG, unconditional text)
            and the speed/memory preset (:class:`~layerflow.pipelines.acceleration.Preset`).
    """

    layers: dict[str, Any]
    latents: torch.Tensor
    task: str
    roles: dict[str, str]
    prompts: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)

    def save(
        self,
        out_dir: str | os.PathLike[str],
        *,
        sample: int = 0,
        fps: int = 8,
        seed: int | None = None,
        settings: Mapping[str, Any] | None = None,
        formats: Sequence[str] = DEFAULT_FORMATS,
        alpha: AlphaMode = "straight",
        overwrite: bool = False,
    ) -> Path:
        """Write sample ``sample`` as a LayerFlow output folder (``formats``: PNG sequences and videos,
        see :func:`layerflow.media.write_output_dir`; previews; manifest)."""
        if not self.layers or not isinstance(next(iter(self.layers.values())), torch.Tensor):
            raise ValueError("only output_type='pt' results can be saved")
        layers = [
            OutputLayer(name, self.roles[name], frames[sample], self.prompts.get(name))
            for name, frames in self.layers.items()
        ]
        return write_output_dir(
            out_dir,
            layers,
            task=self.task,
            fps=fps,
            seed=seed,
            settings=settings,
            formats=formats,
            alpha=alpha,
            overwrite=overwrite,
        )
