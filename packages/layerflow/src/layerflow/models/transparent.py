"""The ``latent_offset`` alpha representation: ``transparent-vae`` as a pipeline component.

LayerDiffuse-style latent transparency carries a layer's alpha inside its latent (an offset added in
the frozen VAE's posterior), so a transparent layer needs one clip instead of colour + alpha clips.
This component holds ``transparent-vae``'s offset encoder and transparent decoder; the frozen base
VAE is the pipeline's own ``vae``, passed in per call, so it is neither duplicated nor saved twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config

# diffusers' pipeline loader resolves a component's base class by name in the component's module.
from diffusers.models.modeling_utils import ModelMixin

from transparent_vae import LatentOffsetEncoder, TransparentDecoder, TransparentVAE


class LayerFlowTransparentVAE(ModelMixin, ConfigMixin):  # type: ignore[misc]  # diffusers' own pattern
    """Offset encoder + transparent decoder, saved and loaded like any diffusers model.

    Args:
        encoder_config, decoder_config: ``LatentOffsetEncoder`` / ``TransparentDecoder`` arguments.
        offset_gain: multiplier of the encoder output (see ``transparent_vae.TransparentVAE``).
    """

    @register_to_config
    def __init__(
        self, encoder_config: dict[str, Any], decoder_config: dict[str, Any], offset_gain: float = 1.0
    ):
        super().__init__()
        self.encoder = LatentOffsetEncoder(**encoder_config)
        self.decoder = TransparentDecoder(**decoder_config)

    @classmethod
    def for_vae(
        cls,
        vae: Any,
        *,
        encoder_channels: Sequence[int] | None = None,
        decoder_channels: Sequence[int] | None = None,
        offset_gain: float = 1.0,
        **decoder_options: Any,
    ) -> LayerFlowTransparentVAE:
        """A fresh (zero-offset) component matching ``vae``'s latent channels and compression factors."""
        config = vae.config
        levels = len(config.block_out_channels)  # spatial factor 2 ** (levels - 1)
        encoder_channels = list(encoder_channels or [32 * 2**i for i in range(levels)])
        decoder_channels = list(decoder_channels or [32 * 2**i for i in range(levels + 1)])
        if len(encoder_channels) != levels:
            raise ValueError(
                f"encoder_channels needs {levels} widths for the VAE's {2 ** (levels - 1)}x factor"
            )
        return cls(
            encoder_config={
                "in_channels": 4,
                "latent_channels": int(config.latent_channels),
                "block_channels": encoder_channels,
                "temporal_downsamples": int(math.log2(int(config.temporal_compression_ratio))),
            },
            decoder_config={
                "latent_channels": int(config.latent_channels),
                "block_out_channels": decoder_channels,
                "attention_levels": [False] * len(decoder_channels),
                "latent_level": levels - 1,
                **decoder_options,
            },
            offset_gain=offset_gain,
        )

    def bind(self, base_vae: Any) -> TransparentVAE:
        """The ``TransparentVAE`` of these parts over the (frozen) ``base_vae``."""
        return TransparentVAE(
            base_vae, self.encoder, self.decoder, offset_gain=float(self.config["offset_gain"])
        )

    @property
    def _input_device(self) -> torch.device | None:
        """Where inputs go: the weights' device, or ``None`` (left where they are) when the weights are on
        the meta device, held by sequential CPU offload, whose hooks move the inputs."""
        return None if self.device.type == "meta" else self.device

    def num_latent_frames(self, num_frames: int) -> int:
        """Latent frames the offset encoder makes of ``num_frames`` (must match the base VAE's)."""
        return int(self.encoder.layout.num_latent_frames(num_frames))

    def encode_rgba(self, base_vae: Any, rgba: torch.Tensor) -> torch.Tensor:
        """Straight RGBA ``[B, T, 4, H, W]`` in [0, 1] -> scaled latents ``[B, t, C, h, w]``."""
        video = rgba.permute(0, 2, 1, 3, 4).to(device=self._input_device, dtype=self.dtype)
        return self.bind(base_vae).encode(video).permute(0, 2, 1, 3, 4)

    def decode_rgba(self, base_vae: Any, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, t, C, h, w]`` -> straight RGBA ``[B, T, 4, H, W]`` in [0, 1]."""
        video = latents.permute(0, 2, 1, 3, 4).to(device=self._input_device, dtype=self.dtype)
        return self.bind(base_vae).decode(video).permute(0, 2, 1, 3, 4)
