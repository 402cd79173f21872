"""The eight released LayerFlow checkpoints, as data.

Each official variant (``{gen,fg2bg,bg2fg,seg}_{rgb,rgba}``) was trained for one task, and they
differ only in facts recorded here: the clips and their latent frames (RGBA fg2bg / bg2fg prepend a
copy of frame 0: 65 frames, 17 latents), the prompts (decomposition describes only foreground and
background), the layer embedder, the kind and length of the position table, which latent frames
are conditions (RGB decomposition: only the last 2 latents of the blended clip) and the joint VAE
pass. The converter detects a variant from a checkpoint's transformer facts; the pipeline runs a
variant from its :class:`~layerflow.layout.LayerLayout` alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .layout import AlphaRepresentation, LayerLayout, Task

PositionTableKind = Literal["sincos", "learned"]

#: How the official sampler runs every variant (``sat/configs``): 50 DPM++ 2M SDE steps on
#: CogVideoX-2B's zero-terminal-SNR v-prediction schedule (the pipeline scheduler the converter
#: writes), dynamic CFG 6 with the SAT step-index quirk, all-zero unconditional text.
OFFICIAL_SAMPLING: Mapping[str, Any] = {
    "num_inference_steps": 50,
    "guidance_scale": 6.0,
    "use_dynamic_cfg": True,
    "unconditional": "zeros",
}


@dataclass(frozen=True)
class OfficialVariant:
    """One released checkpoint: its layout and the transformer facts that identify it.

    Attributes:
        name: ``<task>_<rgb|rgba>`` as in the official scripts.
        task: the one task the checkpoint was trained for.
        alpha: ``"rgb"`` (no alpha) or ``"alpha_clip"`` (alpha as its own clip).
        num_prompts: layer prompts of the token sequence (2 for decomposition, else 3).
        layer_embedder: ``"linear"`` (``txt_embedder``) or ``None``.
        position_table: ``"learned"`` (``learnable_pos_embed``) or ``"sincos"`` (frozen).
        table_latent_frames: latent frames of the checkpoint's position table (config
            ``num_frames`` 49 / 64 / 65 -> 13 / 16 / 17); RGB variants use only 12 of their 13.
        duplicate_first_frame: frame 0 is prepended before the joint encode (RGBA fg2bg / bg2fg).
        condition_tail_latents: only the last N latents of the condition clip are clean (RGB seg: 2).
    """

    name: str
    task: Task
    alpha: AlphaRepresentation
    num_prompts: int
    layer_embedder: Literal["linear"] | None
    position_table: PositionTableKind
    table_latent_frames: int
    duplicate_first_frame: bool = False
    condition_tail_latents: int | None = None

    @property
    def layout(self) -> LayerLayout:
        base = LayerLayout.official(self.alpha)
        return LayerLayout(
            base.layers,
            self.alpha,
            vae_pass="joint",
            duplicate_first_frame=self.duplicate_first_frame,
            condition_tail_latents=self.condition_tail_latents,
            tasks=(self.task,),
            variant=self.name,
        )

    @property
    def signature(self) -> tuple[int, int, str | None, PositionTableKind]:
        """What a checkpoint tells: (prompts, table latent frames, layer embedder, table kind)."""
        return (self.num_prompts, self.table_latent_frames, self.layer_embedder, self.position_table)


OFFICIAL_VARIANTS: Mapping[str, OfficialVariant] = {
    v.name: v
    for v in (
        OfficialVariant("gen_rgba", "generate", "alpha_clip", 3, "linear", "sincos", 16),
        OfficialVariant(
            "fg2bg_rgba", "foreground_to_background", "alpha_clip", 3, "linear", "sincos", 17, True
        ),
        OfficialVariant(
            "bg2fg_rgba", "background_to_foreground", "alpha_clip", 3, "linear", "sincos", 17, True
        ),
        OfficialVariant("seg_rgba", "decompose", "alpha_clip", 2, None, "learned", 16),
        OfficialVariant("gen_rgb", "generate", "rgb", 3, None, "sincos", 13),
        OfficialVariant("fg2bg_rgb", "foreground_to_background", "rgb", 3, None, "learned", 13),
        OfficialVariant("bg2fg_rgb", "background_to_foreground", "rgb", 3, None, "learned", 13),
        OfficialVariant("seg_rgb", "decompose", "rgb", 2, None, "learned", 13, condition_tail_latents=2),
    )
}


def official_variant(name: str) -> OfficialVariant:
    try:
        return OFFICIAL_VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown official variant {name!r}; expected one of {list(OFFICIAL_VARIANTS)}"
        ) from None


def matching_variants(
    *,
    table_splits: list[tuple[int, int]],
    layer_embedder: str | None,
    position_table: PositionTableKind,
) -> list[str]:
    """Variants whose signature fits a checkpoint.

    ``table_splits`` are the ``(prompts, latent frames)`` splits its position table allows (a tiny
    table can split several ways).
    """
    return [
        v.name
        for v in OFFICIAL_VARIANTS.values()
        if (v.num_prompts, v.table_latent_frames) in table_splits
        and v.layer_embedder == layer_embedder
        and v.position_table == position_table
    ]
