"""Where a stage starts from and what it leaves behind.

Stage output folder (``<output_root>/stage{N}/``)::

    checkpoints/checkpoint-<step>/   resumable state (see :mod:`.checkpointing`)
    final/pipeline/                  LayerFlowPipeline.save_pretrained (safetensors); the transformer
                                     carries the LoRAs trained so far in transformer/adapters/<name>/
                                     (multi-lora native), loaded with LayerFlow's inference gates
                                     (motion 0, content 1) by LayerFlowPipeline.from_pretrained
    final/trained.safetensors        the parameters this stage trained (EMA weights when EMA is on)
    final/training.json              stage, steps, losses, config
    logs/                            tracker logs (TensorBoard)

Stage N > 1 starts from ``stage{N-1}/final/pipeline`` (stage 3: with stage 2's motion LoRA, frozen).
The frozen VAE and text encoder of the export are loaded afresh from the stage's starting point, so
a bf16/fp16 run never bakes reduced-precision copies into the exported pipeline.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import multi_lora
from layerflow.atomic import atomic_directory
from layerflow.layout import FIRST_FRAME_TASKS, LayerLayout
from layerflow.models import LayerFlowTransformer3DModel, LayerFlowTransparentVAE
from layerflow.pipelines import LayerFlowPipeline
from layerflow.pipelines.scheduling import make_scheduler
from layerflow.stage_output import PIPELINE, RECORD, StageOutput
from layerflow.tiny import build_tiny_training_pipeline

from .config import ConfigError, TrainConfig
from .stages import MOTION


class MissingStageError(FileNotFoundError):
    """Stage N was asked to start from stage N-1's output, which does not exist."""


def config_layout(config: TrainConfig) -> LayerLayout | None:
    """``model.layout`` as a :class:`LayerLayout` (``None``: the base model's own)."""
    layout = config.model.layout
    return layout.to_layout("model.layout") if layout is not None else None


def check_layout(config: TrainConfig, pipeline: LayerFlowPipeline, where: str) -> LayerFlowPipeline:
    """A loaded pipeline's layout must be ``model.layout`` when that is set (never silently replaced)."""
    wanted = config_layout(config)
    if wanted is not None and wanted != pipeline.layer_layout:
        raise ConfigError(
            f"model.layout is {wanted.to_dict()}, but {where} was saved with {pipeline.layer_layout.to_dict()}: "
            "remove model.layout or start from a base of that layout"
        )
    return pipeline


def attach_transparent_vae(config: TrainConfig, pipeline: LayerFlowPipeline) -> LayerFlowPipeline:
    """Load ``model.transparent_vae`` into a ``latent_offset`` pipeline that has none."""
    path = config.model.transparent_vae
    if path is not None:
        if pipeline.transparent_vae is not None:
            raise ConfigError(
                "model.transparent_vae is set, but the base model already has a transparent VAE"
            )
        if pipeline.layer_layout.alpha != "latent_offset":
            raise ConfigError("model.transparent_vae is set, but the layout's alpha is not 'latent_offset'")
        pipeline.register_modules(transparent_vae=LayerFlowTransparentVAE.from_pretrained(path))
    if pipeline.layer_layout.alpha == "latent_offset" and pipeline.transparent_vae is None:
        raise ConfigError(
            "the layout carries alpha as a latent offset: set model.transparent_vae to a saved "
            "LayerFlowTransparentVAE folder (trained with transparent-vae)"
        )
    return pipeline


def record_first_frame_tasks(pipeline: LayerFlowPipeline, tasks: Mapping[str, float]) -> None:
    """List the first-frame tasks this training draws in the pipeline's layout: the saved model then
    splices first frames clean (trained mode) instead of re-noising them (training-free)."""
    layout = pipeline.layer_layout
    added = tuple(t for t in FIRST_FRAME_TASKS if tasks.get(t, 0) > 0 and t not in layout.tasks)
    if added:
        pipeline.layer_layout = dataclasses.replace(layout, tasks=(*layout.tasks, *added))
        pipeline.register_to_config(layout=pipeline.layer_layout.to_dict())


def load_base(config: TrainConfig) -> LayerFlowPipeline:
    """``model.base``: the tiny pipeline, a saved LayerFlowPipeline folder or a stock CogVideoX folder."""
    base = config.model.base
    layout = config_layout(config)
    if base == "tiny":
        return build_tiny_training_pipeline(config.model.tiny_seed, config.model.tiny_num_layers, layout)
    path = Path(base)
    if path.exists():
        index_file = path / "model_index.json"
        if not index_file.is_file():
            raise FileNotFoundError(f"model.base={base!r}: no model_index.json in {path}")
        if json.loads(index_file.read_text()).get("_class_name") == LayerFlowPipeline.__name__:
            return check_layout(config, LayerFlowPipeline.from_pretrained(path), f"model.base {path}")
    return load_stock_cogvideox(base, layout or LayerLayout.official())


def load_stock_cogvideox(path: str | Path, layout: LayerLayout) -> LayerFlowPipeline:
    """A LayerFlow pipeline around stock CogVideoX-2B weights, a local folder or a hub id the user's
    diffusers may download (the layer embedder starts at zero)."""
    from diffusers import AutoencoderKLCogVideoX
    from transformers import AutoTokenizer, T5EncoderModel

    return LayerFlowPipeline(
        tokenizer=AutoTokenizer.from_pretrained(path, subfolder="tokenizer"),
        text_encoder=T5EncoderModel.from_pretrained(path, subfolder="text_encoder"),
        vae=AutoencoderKLCogVideoX.from_pretrained(path, subfolder="vae"),
        transformer=LayerFlowTransformer3DModel.from_pretrained(path, subfolder="transformer"),
        scheduler=make_scheduler("dpm"),
        layout=layout.to_dict(),
    )


def load_starting_point(config: TrainConfig) -> LayerFlowPipeline:
    """The pipeline stage ``config.stage`` trains, with the adapters of earlier stages attached."""
    if config.stage == 1 or config.model.init_from == "base":
        return attach_transparent_vae(config, load_base(config))
    previous = StageOutput(config.previous_stage_dir)
    if not previous.is_finished():
        raise MissingStageError(
            f"stage {config.stage} starts from stage {config.stage - 1}'s output, but {previous.final} holds no "
            f"finished stage: run `python -m layerflow.training --stage {config.stage - 1}` first (same "
            f"run.output_root), set model.previous_stage_dir, or pass --from-base to start from model.base"
        )
    pipeline = check_layout(config, LayerFlowPipeline.from_pretrained(previous.pipeline), str(previous.final))
    if config.stage == 3 and MOTION not in multi_lora.list_adapters(pipeline.transformer):
        raise MissingStageError(f"stage 3 needs stage 2's motion LoRA, but {previous.pipeline} has none")
    return pipeline


def export_final(
    config: TrainConfig, transformer: nn.Module, trained: dict[str, torch.Tensor], summary: dict[str, Any]
) -> Path:
    """Write ``final/`` atomically (temporary folder, then rename); returns it.

    The pipeline is the stage's starting point (fresh, full-precision VAE and text encoder) with the
    trained transformer, LoRA adapters included (``LayerFlowTransformer3DModel.save_pretrained``).
    """
    from safetensors.torch import save_file

    final = StageOutput(config.output_dir).final
    start = load_starting_point(config)
    record_first_frame_tasks(start, config.objective.tasks)
    with atomic_directory(final, overwrite=True) as tmp:
        LayerFlowPipeline(
            tokenizer=start.tokenizer,
            text_encoder=start.text_encoder,
            vae=start.vae,
            transformer=transformer,
            scheduler=start.scheduler,
            transparent_vae=start.transparent_vae,
            layout=start.layer_layout.to_dict(),
        ).save_pretrained(tmp / PIPELINE, safe_serialization=True)
        trained_cpu = {k: v.detach().float().cpu().contiguous() for k, v in trained.items()}
        save_file(trained_cpu, str(tmp / "trained.safetensors"))
        (tmp / RECORD).write_text(json.dumps(summary, indent=1))
    return final
