"""``LayerFlowTransformer3DModel``: CogVideoX with one prompt per layer and clips along the frame axis.

Only the patch embedding differs from diffusers' ``CogVideoXTransformer3DModel``: it accepts any
number of layer prompts (``L * max_text_seq_length`` text tokens), adds a layer-index embedding to
every token of prompt ``i`` after the text projection (official LayerFlow), and places the 3D
sin-cos positions either continuously over all clips (official) or identically in every clip. The
blocks, attention processors, adapters and unpatchify are the stock ones, so CogVideoX-2B weights
load unchanged and, with one clip and a zero layer embedding, the output is the stock output.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import CogVideoXPatchEmbed

# diffusers' pipeline loader resolves a component's base class by name in the component's module.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXTransformer3DModel
from torch import nn

from layer_embeddings import LayerEmbedder
from layerflow.geometry import FrameGeometry
from layerflow.layout import TaskLayout

from .adapters import ADAPTERS_FOLDER, bare_linears, load_adapters, save_adapters
from .attention import install_layer_attention, segment_attention_kwargs

logger = logging.getLogger(__name__)
#: Seeds the modules a stock checkpoint lacks (see ``_materialize_new_modules``).
NEW_MODULE_SEED = 0

PositionMode = Literal["continuous", "per_clip"]
LayerEmbedderKind = Literal["linear", "table"]


class LayerFlowPatchEmbed(CogVideoXPatchEmbed):
    """CogVideoX patch embedding for ``[prompt_0 | ... | prompt_{L-1} | clip_0 | ... | clip_{C-1}]``.

    Keeps the stock parameter names (``proj``, ``text_proj``) and adds ``layer_embedder`` and,
    for checkpoints that store one, a learnable joint ``position_table`` (text rows included).
    """

    def __init__(
        self,
        *,
        num_layer_prompts: int,
        layer_embedder: LayerEmbedderKind | None,
        position_mode: PositionMode,
        learned_position_frames: int | None,
        **stock: Any,
    ) -> None:
        # The stock fixed-size joint table (a 136 MB buffer for 2B) is never used: positions are
        # computed per call for the actual clips, so the parent is told not to build it.
        super().__init__(**stock, use_positional_embeddings=False, use_learned_positional_embeddings=False)
        if self.patch_size_t is not None:
            raise ValueError("LayerFlow supports CogVideoX 1.0 patching (patch_size_t=None) only")
        if position_mode not in ("continuous", "per_clip"):
            raise ValueError(f"position_mode must be 'continuous' or 'per_clip', got {position_mode!r}")
        if learned_position_frames is not None and position_mode != "continuous":
            raise ValueError(
                "a learned position table is one continuous table; use position_mode='continuous'"
            )
        self.num_layer_prompts = num_layer_prompts
        self.position_mode: PositionMode = position_mode
        self.layer_embedder = (
            None
            if layer_embedder is None
            else LayerEmbedder(num_layer_prompts, self.embed_dim, kind=layer_embedder, zero_init=True)
        )
        self.position_table: nn.Parameter | None = None
        if learned_position_frames is not None:
            self.position_table = nn.Parameter(self.sincos_position_table(learned_position_frames))
        self._num_clips = 1
        self._table_cache: dict[tuple[int, int, int, str], torch.Tensor] = {}

    # -- positions ------------------------------------------------------------------------------
    def sincos_position_table(self, latent_frames: int) -> torch.Tensor:
        """The official joint table ``[1, L*text + frames*h*w, D]``: zero text rows, 3D sin-cos video rows."""
        frames = (latent_frames - 1) * self.temporal_compression_ratio + 1
        video = self._get_positional_embeddings(self.sample_height, self.sample_width, frames)
        video = video[:, self.max_text_seq_length :]
        text = video.new_zeros(1, self.num_layer_prompts * self.max_text_seq_length, self.embed_dim)
        return torch.cat([text, video], dim=1).float()

    def _video_table(self, latent_frames: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Sin-cos positions for ``latent_frames`` frames of ``height x width`` latents (cached)."""
        key = (latent_frames, height, width, str(device))
        if key not in self._table_cache:
            frames = (latent_frames - 1) * self.temporal_compression_ratio + 1
            joint = self._get_positional_embeddings(height, width, frames, device=device)
            self._table_cache = {key: joint[:, self.max_text_seq_length :]}
        return self._table_cache[key]

    def check_sequence(self, num_prompts: int, num_frames: int, height: int, width: int) -> None:
        """Raise naming the problem if ``num_prompts`` prompts and ``num_frames`` latent frames of
        ``height x width`` latents do not fit this embedding (prompt slots, learned table)."""
        if num_prompts > self.num_layer_prompts:
            raise ValueError(
                f"{num_prompts} layer prompts, but the model has {self.num_layer_prompts} prompt slots"
            )
        if self.position_table is None:
            return
        expected_text = self.num_layer_prompts * self.max_text_seq_length
        text_length = num_prompts * self.max_text_seq_length
        if text_length != expected_text:
            raise ValueError(
                f"the learned position table holds {self.num_layer_prompts} prompts of "
                f"{self.max_text_seq_length} tokens ({expected_text} text rows), got {text_length} text tokens"
            )
        if (height, width) != (self.sample_height, self.sample_width):
            raise ValueError(
                f"the learned position table is for {self.sample_height}x{self.sample_width} latents, "
                f"got {height}x{width}"
            )
        video_length = num_frames * (height // self.patch_size) * (width // self.patch_size)
        available = self.position_table.shape[1] - expected_text
        if video_length > available:
            raise ValueError(
                f"the learned position table covers {available} video tokens, got {video_length}"
            )

    def _video_positions(
        self, num_frames: int, height: int, width: int, text_length: int, device: torch.device
    ) -> torch.Tensor:
        if self.position_table is not None:
            self.check_sequence(text_length // self.max_text_seq_length, num_frames, height, width)
            video_length = num_frames * (height // self.patch_size) * (width // self.patch_size)
            return self.position_table[:, : text_length + video_length]
        if self.position_mode == "continuous":
            return self._video_table(num_frames, height, width, device)
        if num_frames % self._num_clips:
            raise ValueError(f"{num_frames} latent frames do not split into {self._num_clips} equal clips")
        clip = self._video_table(num_frames // self._num_clips, height, width, device)
        return clip.repeat(1, self._num_clips, 1)

    # -- forward --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def clips(self, num_clips: int) -> Iterator[None]:
        """Tell the embedding how many equal clips the frame axis holds (``per_clip`` positions)."""
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        previous, self._num_clips = self._num_clips, num_clips
        try:
            yield
        finally:
            self._num_clips = previous

    def layer_embeddings(self, text_length: int, device: torch.device | None = None) -> torch.Tensor | None:
        """``[L * max_text_seq_length, D]`` layer vectors for the text tokens, or ``None`` without an embedder.

        ``device``: where the text is (the weights may be on the meta device under sequential CPU offload).
        """
        if text_length % self.max_text_seq_length:
            raise ValueError(
                f"text length {text_length} is not a whole number of {self.max_text_seq_length}-token layer prompts"
            )
        num_prompts = text_length // self.max_text_seq_length
        if num_prompts > self.num_layer_prompts:
            raise ValueError(
                f"{num_prompts} layer prompts, but the model has {self.num_layer_prompts} prompt slots"
            )
        if self.layer_embedder is None:
            return None
        return self.layer_embedder.token_embeddings(self.max_text_seq_length, num_prompts, device)

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        text_length = text_embeds.shape[1]
        layer = self.layer_embeddings(text_length, text_embeds.device)
        text_embeds = self.text_proj(text_embeds)
        if layer is not None:
            text_embeds = text_embeds + layer.to(text_embeds.dtype)

        batch_size, num_frames, channels, height, width = image_embeds.shape
        video = self.proj(image_embeds.reshape(-1, channels, height, width))
        video = video.view(batch_size, num_frames, *video.shape[1:]).flatten(3).transpose(2, 3).flatten(1, 2)
        embeds = torch.cat([text_embeds, video], dim=1).contiguous()

        positions = self._video_positions(num_frames, height, width, text_length, embeds.device)
        if self.position_table is not None:
            return embeds + positions.to(embeds.dtype)
        # Text rows of the sin-cos table are zero: add positions to the video tokens only, exactly as
        # the stock joint add does numerically.
        video_part = embeds[:, text_length:] + positions.to(embeds.dtype)
        return torch.cat([embeds[:, :text_length], video_part], dim=1)


class LayerFlowTransformer3DModel(CogVideoXTransformer3DModel):
    """CogVideoX transformer whose text is one ``max_text_seq_length``-token prompt per layer.

    Extra config (everything else is ``CogVideoXTransformer3DModel``'s):
        num_layer_prompts: prompt slots of the layer embedder (official: 3).
        layer_embedder: ``"linear"`` (official ``LayerNorm(Linear(1->D)(i))``), ``"table"`` or ``None``
            (official RGB variants have none). Initialised to zero, so a fresh model equals the stock one.
        position_mode: ``"continuous"``: one sin-cos table over all clips, consecutive temporal
            indices (official); ``"per_clip"``: every clip gets the same positions.
        learned_position_frames: latent frames of a learnable joint position table (some official
            variants store one); ``None`` uses the computed sin-cos table.
        attention_backend: installs ``layer-attention``'s processor with this backend (``"auto"``:
            SDPA unless another backend is measured faster here), which takes a segment layout per call;
            ``None`` keeps diffusers' stock processor.

    Motion/content LoRA adapters (``layerflow.models.adapters``) are saved beside the weights in
    ``adapters/`` and loaded back by :meth:`from_pretrained` with the inference gates.
    """

    patch_embed: LayerFlowPatchEmbed
    #: ``compile_repeated_blocks()`` compiles one block and reuses the graph for every block.
    _repeated_blocks = ["CogVideoXBlock"]
    #: Kept in their dtype by ``enable_layerwise_casting``: the stock patterns (patch embedding, norms)
    #: and, named so they stay kept wherever they live, the layer embedder (what tells the layers
    #: apart), the learned position table and the LoRA factors (merged into the weights at inference).
    _skip_layerwise_casting_patterns = [
        *CogVideoXTransformer3DModel._skip_layerwise_casting_patterns,
        "layer_embedder",
        "position_table",
        "lora_A",
        "lora_B",
    ]

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 30,
        attention_head_dim: int = 64,
        in_channels: int = 16,
        out_channels: int | None = 16,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        time_embed_dim: int = 512,
        ofs_embed_dim: int | None = None,
        text_embed_dim: int = 4096,
        num_layers: int = 30,
        dropout: float = 0.0,
        attention_bias: bool = True,
        sample_width: int = 90,
        sample_height: int = 60,
        sample_frames: int = 49,
        patch_size: int = 2,
        patch_size_t: int | None = None,
        temporal_compression_ratio: int = 4,
        max_text_seq_length: int = 226,
        activation_fn: str = "gelu-approximate",
        timestep_activation_fn: str = "silu",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        spatial_interpolation_scale: float = 1.875,
        temporal_interpolation_scale: float = 1.0,
        use_rotary_positional_embeddings: bool = False,
        use_learned_positional_embeddings: bool = False,
        patch_bias: bool = True,
        num_layer_prompts: int = 3,
        layer_embedder: LayerEmbedderKind | None = "linear",
        position_mode: PositionMode = "continuous",
        learned_position_frames: int | None = None,
        attention_backend: str | None = "auto",
    ):
        if use_rotary_positional_embeddings or use_learned_positional_embeddings:
            raise ValueError(
                "LayerFlow builds on CogVideoX-2B (sin-cos positions); rotary and 5B-I2V learned embeddings "
                "are not supported"
            )
        super().__init__(
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            time_embed_dim=time_embed_dim,
            ofs_embed_dim=ofs_embed_dim,
            text_embed_dim=text_embed_dim,
            num_layers=num_layers,
            dropout=dropout,
            attention_bias=attention_bias,
            sample_width=sample_width,
            sample_height=sample_height,
            sample_frames=sample_frames,
            patch_size=patch_size,
            patch_size_t=patch_size_t,
            temporal_compression_ratio=temporal_compression_ratio,
            max_text_seq_length=max_text_seq_length,
            activation_fn=activation_fn,
            timestep_activation_fn=timestep_activation_fn,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
            spatial_interpolation_scale=spatial_interpolation_scale,
            temporal_interpolation_scale=temporal_interpolation_scale,
            use_rotary_positional_embeddings=False,
            use_learned_positional_embeddings=False,
            patch_bias=patch_bias,
        )
        self.patch_embed = LayerFlowPatchEmbed(
            patch_size=patch_size,
            patch_size_t=patch_size_t,
            in_channels=in_channels,
            embed_dim=num_attention_heads * attention_head_dim,
            text_embed_dim=text_embed_dim,
            bias=patch_bias,
            sample_width=sample_width,
            sample_height=sample_height,
            sample_frames=sample_frames,
            temporal_compression_ratio=temporal_compression_ratio,
            max_text_seq_length=max_text_seq_length,
            spatial_interpolation_scale=spatial_interpolation_scale,
            temporal_interpolation_scale=temporal_interpolation_scale,
            num_layer_prompts=num_layer_prompts,
            layer_embedder=layer_embedder,
            position_mode=position_mode,
            learned_position_frames=learned_position_frames,
        )
        if attention_backend is not None:
            install_layer_attention(self, attention_backend)

    def attention_kwargs_for(
        self, task_layout: TaskLayout, frames: FrameGeometry, isolate_conditions: bool = False
    ) -> dict[str, Any]:
        """``attention_kwargs`` for one call: the segment layout of ``task_layout`` at ``frames``.

        The transformer owns the patch and the prompt length, so it turns the layout's prompts and
        clips (each clip its own latent frames) into token segments. Empty with the stock processor.
        """
        config = self.config
        patch = int(config["patch_size"])
        tokens = (frames.latent_height // patch) * (frames.latent_width // patch)
        if tokens != frames.tokens_per_latent_frame:
            raise ValueError(
                f"frame geometry says {frames.tokens_per_latent_frame} tokens per latent frame, the "
                f"transformer (patch {patch}) makes {tokens}"
            )
        lengths = task_layout.segment_lengths(int(config["max_text_seq_length"]), frames.clip_tokens)
        return segment_attention_kwargs(self, lengths, task_layout.attention_table(isolate_conditions))

    def check_inputs(self, task_layout: TaskLayout, frames: FrameGeometry) -> None:
        """Raise before any compute if ``task_layout`` at ``frames`` does not fit this model."""
        self.patch_embed.check_sequence(
            task_layout.num_prompts, frames.latent_frames, frames.latent_height, frames.latent_width
        )
        if self.patch_embed.position_mode == "per_clip" and len(set(frames.clip_latent_frames)) > 1:
            raise ValueError(
                f"per_clip positions need equal clips, got latent frames {frames.clip_latent_frames}"
            )

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: int | float | torch.Tensor,
        *,
        num_clips: int = 1,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        """The stock forward; ``num_clips`` says how many equal clips the frame axis holds."""
        with self.patch_embed.clips(num_clips):
            return super().forward(
                hidden_states,
                encoder_hidden_states,
                timestep,
                attention_kwargs=attention_kwargs,
                return_dict=return_dict,
                **kwargs,
            )

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """``from_pretrained`` that also loads a stock CogVideoX transformer directory.

        Modules the stock checkpoint lacks (layer embedder, learned position table) are left on the
        meta device by diffusers' ``low_cpu_mem_usage`` loading; they are materialised here with their
        LayerFlow initialisation (zero layer embedding, sin-cos table) and named in a log message.

        The motion/content LoRAs that :meth:`save_pretrained` wrote to ``adapters/`` are
        ``multi_lora`` adapters with per-sample gates, a format peft's loader (and so diffusers'
        ``load_lora_adapter``) does not hold: they are loaded here, frozen, with the inference
        gates, and logged; ``load_adapters=False`` loads the base weights alone.
        """
        with_adapters = kwargs.pop("load_adapters", True)
        model = super().from_pretrained(*args, **kwargs)
        model._materialize_new_modules()
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        if with_adapters and source is not None and Path(source).is_dir():
            adapters = Path(source) / (kwargs.get("subfolder") or "") / ADAPTERS_FOLDER
            if adapters.is_dir():
                names = load_adapters(model, adapters)
                logger.info("loaded LoRA adapters %s from %s (inference gates set)", names, adapters)
        return model

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        """The stock ``save_pretrained`` for the base weights, plus ``adapters/<name>/`` per LoRA adapter."""
        with bare_linears(self):
            super().save_pretrained(save_directory, *args, **kwargs)
        save_adapters(self, Path(save_directory) / ADAPTERS_FOLDER)

    def _materialize_new_modules(self) -> None:
        """Build what the checkpoint lacks, the same way in every process: the layer embedder's random
        input projection is drawn from a fixed seed (the caller's RNG untouched), so two fine-tunes of
        one stock checkpoint with one training seed are the same run."""
        embed = self.patch_embed
        reference = embed.text_proj.weight
        created: list[str] = []
        if embed.layer_embedder is not None and any(p.is_meta for p in embed.layer_embedder.parameters()):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(NEW_MODULE_SEED)
                embedder = LayerEmbedder(
                    embed.num_layer_prompts, embed.embed_dim, kind=embed.layer_embedder.kind, zero_init=True
                )
            embed.layer_embedder = embedder.to(device=reference.device, dtype=reference.dtype)
            created.append("patch_embed.layer_embedder")
        if embed.position_table is not None and embed.position_table.is_meta:
            frames = int(self.config["learned_position_frames"])
            table = embed.sincos_position_table(frames).to(device=reference.device, dtype=reference.dtype)
            embed.position_table = nn.Parameter(table)
            created.append("patch_embed.position_table")
        if created:
            logger.warning("initialised modules missing from the checkpoint: %s", ", ".join(created))
