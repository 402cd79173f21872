"""The one clip codec: a layout's layers <-> model-range clips <-> scaled VAE latents.

Library frames are float in [0, 1], frames first (``[B, T, C, H, W]``), straight alpha. The model
sees clips in [-1, 1] (official ``image_process_simple``): a transparent layer's colour premultiplied
onto mid-grey (``fg * a + 0.5 * (1 - a)``) and, with ``alpha_clip``, its matte repeated to 3 channels
as a clip of its own; with ``latent_offset`` the transparent VAE encodes straight RGBA instead.

Two VAE pass modes (:attr:`LayerLayout.vae_pass`):

* ``per_clip``: every clip is encoded and decoded on its own.
* ``joint`` (official): the clips, concatenated along time in layout order (after a copy of frame 0
  with ``duplicate_first_frame``), are ONE causal video: one encode, one decode of the whole latent
  sequence, then split. The VAE's frame batches cover the whole video (its causal convolutions and
  GroupNorm statistics see every clip). With VAE tiling on, memory is bounded by the tile size:
  every spatial tile goes through the whole video in one pass, so only the GroupNorm statistics
  (per tile) and the blended tile seams differ from the untiled pass; ``bench_vae_pass.py`` and the
  tests measure it. The VAE's own frame batches (8 frames) would bound memory further but change
  the latents about twice as much (GroupNorm statistics per batch). Layers whose frames are unknown
  (the ones a task generates) are filled with zeros in model range, i.e. mid-grey, for the joint encode.

First-frame conditions (a layer given as its first frame only, :mod:`layerflow.conditions`): the
frame, pre-composited like any frame of its layer, is held over the pixel frames its clip's first
latent frame covers (:meth:`ModelGeometry.first_latent_spans`: frame 0 alone with ``4k + 1``
frames per clip or a duplicated first frame, else the first ``t`` frames) and only that latent frame
is a condition. ``per_clip`` encodes exactly that still; ``joint`` puts it at the start of its clip
with mid-grey after it (the rest of the clip is unknown, like a generated layer).

Pipeline, precompute cache and trainer all encode through :class:`ClipCodec`, so what the trainer
encodes for a sample is what the pipeline encodes for the same frames.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from .compositing import over
from .geometry import FrameGeometry, ModelGeometry
from .layout import ClipContent, ClipSpec, LayerLayout, LayerSpec

GREY = 0.5
#: Below this alpha the colour of a decoded foreground is undefined; it is set to grey there.
MIN_ALPHA = 1e-3


# ------------------------------------------------------------------------------ pixels <-> clips
def to_model_range(frames: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return frames * 2.0 - 1.0


def from_model_range(frames: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped (the VAE can overshoot)."""
    return ((frames + 1.0) / 2.0).clamp(0.0, 1.0)


def premultiply_onto_grey(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Straight ``rgb`` ``[..., 3, H, W]`` and ``alpha`` ``[..., 1, H, W]`` -> colour composited over mid-grey."""
    return over(rgb, alpha, GREY)


def unpremultiply_from_grey(composited: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`premultiply_onto_grey`, grey where alpha is (nearly) zero; result in [0, 1]."""
    safe = alpha.clamp_min(MIN_ALPHA)
    rgb = (composited - GREY * (1.0 - alpha)) / safe
    return torch.where(alpha > MIN_ALPHA, rgb, torch.full_like(rgb, GREY)).clamp(0.0, 1.0)


def alpha_to_clip(alpha: torch.Tensor) -> torch.Tensor:
    """Alpha ``[..., 1, H, W]`` -> the official 3-channel alpha clip."""
    return alpha.expand(*alpha.shape[:-3], 3, *alpha.shape[-2:])


def alpha_from_clip(clip: torch.Tensor) -> torch.Tensor:
    """Decoded alpha clip ``[..., 3, H, W]`` in [0, 1] -> alpha ``[..., 1, H, W]`` (channel mean)."""
    return clip.mean(dim=-3, keepdim=True).clamp(0.0, 1.0)


def clip_pixels(layer: LayerSpec, clip: ClipSpec, frames: torch.Tensor) -> torch.Tensor:
    """One clip of a layer in model range, ``[..., T, 3, H, W]``, from the layer's [0, 1] frames.

    A transparent layer given RGBA is premultiplied onto grey (colour clip) or gives its matte
    (alpha clip); an RGB layer is its colour as is.
    """
    if clip.content == "alpha":
        return to_model_range(alpha_to_clip(frames[..., 3:, :, :]))
    color = frames[..., :3, :, :]
    if layer.transparent and frames.shape[-3] == 4:
        color = premultiply_onto_grey(color, frames[..., 3:, :, :])
    return to_model_range(color)


def layer_frames(has_alpha: bool, clips: Mapping[ClipContent, torch.Tensor]) -> torch.Tensor:
    """A layer's [0, 1] frames from its decoded model-range clips (``{"color": ..., "alpha": ...}``)."""
    color = from_model_range(clips["color"])
    if not has_alpha:
        return color
    matte = alpha_from_clip(from_model_range(clips["alpha"]))
    return torch.cat([unpremultiply_from_grey(color, matte), matte], dim=-3)


# ------------------------------------------------------------------------------ latents
@dataclass
class _Piece:
    """One VAE pass: latent frames ``start .. start + t`` of the sequence, VAE layout ``[B, C, t, h, w]``."""

    start: int
    mean: torch.Tensor
    std: torch.Tensor | None  # None: a deterministic latent (transparent VAE), already scaled

    @property
    def frames(self) -> int:
        return int(self.mean.shape[2])


@dataclass
class LatentPosterior:
    """The VAE posterior of the encoded clips, as diagonal Gaussians per VAE pass.

    ``sample`` draws exactly as diffusers' ``DiagonalGaussianDistribution.sample`` does, one pass
    after the other, and scales by the VAE scaling factor: ``(mean + std * eps) * scale``.
    Latent frames of clips that were not encoded are zero in every result.
    """

    pieces: list[_Piece]
    total_frames: int
    scaling_factor: float

    def _assemble(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        if not parts:
            raise ValueError("nothing was encoded: no frames were given for any clip")
        first = parts[0]
        batch, channels, _, h, w = first.shape
        full = first.new_zeros(batch, self.total_frames, channels, h, w)
        for piece, part in zip(self.pieces, parts, strict=True):
            full[:, piece.start : piece.start + piece.frames] = part.permute(0, 2, 1, 3, 4)
        return full

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled posterior sample ``[B, F, C, h, w]`` (the official latent)."""
        parts = []
        for piece in self.pieces:
            if piece.std is None:
                parts.append(piece.mean)
                continue
            eps = randn_tensor(
                piece.mean.shape, generator=generator, device=piece.mean.device, dtype=piece.mean.dtype
            )
            parts.append((piece.mean + piece.std * eps) * self.scaling_factor)
        return self._assemble(parts)

    @property
    def mean(self) -> torch.Tensor:
        """Unscaled posterior mean ``[B, F, C, h, w]`` (deterministic pieces: their latent / scale)."""
        return self._assemble(
            [p.mean if p.std is not None else p.mean / self.scaling_factor for p in self.pieces]
        )

    @property
    def std(self) -> torch.Tensor:
        """Unscaled posterior std ``[B, F, C, h, w]`` (zero for deterministic pieces)."""
        return self._assemble([p.std if p.std is not None else torch.zeros_like(p.mean) for p in self.pieces])


def check_joint_vae(vae: Any) -> None:
    """The joint pass needs a CogVideoX-style VAE (frame batch sizes, tiling switch); raises otherwise."""
    for name in ("num_sample_frames_batch_size", "num_latent_frames_batch_size", "use_tiling"):
        if not hasattr(vae, name):
            raise TypeError(
                f"the joint VAE pass needs a CogVideoX-style VAE with {name!r}; got {type(vae).__name__}"
            )


@contextlib.contextmanager
def whole_video_batches(
    vae: Any, frames: int | None = None, latent_frames: int | None = None
) -> Iterator[None]:
    """Let a CogVideoX VAE encode ``frames`` pixel / decode ``latent_frames`` latent frames in one batch
    (with tiling on: every spatial tile over the whole video)."""
    check_joint_vae(vae)
    saved = (vae.num_sample_frames_batch_size, vae.num_latent_frames_batch_size)
    vae.num_sample_frames_batch_size = frames or saved[0]
    vae.num_latent_frames_batch_size = latent_frames or saved[1]
    try:
        yield
    finally:
        vae.num_sample_frames_batch_size, vae.num_latent_frames_batch_size = saved


class ClipCodec:
    """Layers by name <-> clips <-> scaled latents for one :class:`LayerLayout`.

    Args:
        layout: the layers, their alpha representation and the VAE pass mode.
        geometry: the model geometry (VAE scaling factor, compression).
        vae: a diffusers ``AutoencoderKLCogVideoX`` (any VAE with ``encode(...).latent_dist`` and
            ``decode(...).sample`` for ``per_clip``).
        transparent_vae: a :class:`~layerflow.models.LayerFlowTransparentVAE` (``latent_offset``).
    """

    def __init__(self, layout: LayerLayout, geometry: ModelGeometry, vae: Any, transparent_vae: Any = None):
        self.layout = layout
        self.geometry = geometry
        self.vae = vae
        self.transparent_vae = transparent_vae

    # -- helpers -------------------------------------------------------------------------------
    def _offset_layer(self, layer: LayerSpec) -> bool:
        return layer.transparent and self.layout.alpha == "latent_offset"

    def clips(
        self,
        frames: Mapping[str, torch.Tensor],
        indices: Sequence[int] | None = None,
        first_frames: Sequence[str] = (),
        num_frames: int | None = None,
    ) -> dict[int, torch.Tensor]:
        """Model-range clips ``[B, T, 3, H, W]`` by clip index for the layers in ``frames``.

        ``indices`` restricts to those clips (default: every clip of a given layer). With
        ``duplicate_first_frame`` the first clip starts with a copy of its frame 0. The layers in
        ``first_frames`` are given one frame ``[B, 1, C, H, W]``: their clips hold it over the first
        latent frame's span for ``num_frames`` frames per clip (joint pass: then mid-grey to the
        clip's length).
        """
        wanted = range(len(self.layout.clips)) if indices is None else indices
        out: dict[int, torch.Tensor] = {}
        for index in wanted:
            clip = self.layout.clips[index]
            if clip.layer not in frames:
                continue
            pixels = clip_pixels(self.layout.layer(clip.layer), clip, frames[clip.layer])
            if clip.layer in first_frames:
                pixels = self._hold_first_frame(index, pixels, num_frames)
            elif index == 0 and self.layout.duplicate_first_frame:
                pixels = torch.cat([pixels[:, :1], pixels], dim=1)
            out[index] = pixels
        return out

    def first_latent_span(self, index: int, num_frames: int) -> int:
        """Pixel frames the first latent frame of clip ``index`` covers (see :mod:`layerflow.codec`)."""
        return self.geometry.first_latent_spans(self.layout, num_frames)[index]

    def _hold_first_frame(self, index: int, frame: torch.Tensor, num_frames: int | None) -> torch.Tensor:
        """One frame ``[B, 1, ...]`` held over clip ``index``'s first latent span (``num_frames``
        per clip), grey-padded to the clip's length in the joint pass."""
        if num_frames is None:
            raise ValueError("first-frame clips need the call's frames per clip (num_frames)")
        span = self.first_latent_span(index, num_frames)
        held = frame.expand(-1, span, *frame.shape[2:])
        if self.layout.vae_pass != "joint":
            return held
        length = num_frames + int(index == 0 and self.layout.duplicate_first_frame)
        grey = frame.new_zeros(frame.shape[0], length - span, *frame.shape[2:])
        return torch.cat([held, grey], dim=1)

    def _posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Weights on the meta device are held by sequential CPU offload, whose hooks move the input.
        device = None if self.vae.device.type == "meta" else self.vae.device
        video = pixels.permute(0, 2, 1, 3, 4).to(device=device, dtype=self.vae.dtype)
        posterior = self.vae.encode(video).latent_dist
        return posterior.mean, posterior.std

    def _clip_starts(self, clip_latent_frames: Sequence[int]) -> list[int]:
        return [sum(clip_latent_frames[:i]) for i in range(len(clip_latent_frames))]

    # -- encode --------------------------------------------------------------------------------
    def encode(
        self,
        frames: Mapping[str, torch.Tensor],
        geometry: FrameGeometry,
        indices: Sequence[int] | None = None,
        first_frames: Sequence[str] = (),
    ) -> LatentPosterior:
        """Posterior of the clips of ``frames`` (layer name -> ``[B, T, C, H, W]`` in [0, 1]).

        ``per_clip``: each clip in ``indices`` (default: every clip of a given layer), in clip order.
        ``joint``: the whole video in one pass, unknown layers as mid-grey; ``indices`` is ignored.
        The layers in ``first_frames`` are one frame ``[B, 1, C, H, W]``; only their clips' first
        latent frames are encoded (see :mod:`layerflow.codec`).
        """
        starts = self._clip_starts(geometry.clip_latent_frames)
        total = geometry.latent_frames
        scale = self.geometry.scaling_factor
        if self.layout.vae_pass == "joint":
            joint = self._joint_posterior(frames, geometry, first_frames)
            return LatentPosterior([_Piece(0, *joint)], total, scale)
        pieces: list[_Piece] = []
        wanted = range(len(self.layout.clips)) if indices is None else sorted(indices)
        for index in wanted:
            clip = self.layout.clips[index]
            if clip.layer not in frames:
                continue
            layer = self.layout.layer(clip.layer)
            if self._offset_layer(layer):
                rgba = frames[clip.layer]
                if clip.layer in first_frames:
                    rgba = self._hold_first_frame(index, rgba, geometry.num_frames)
                latent = self.transparent_vae.encode_rgba(self.vae, rgba)
                pieces.append(_Piece(starts[index], latent.permute(0, 2, 1, 3, 4), None))
            else:
                (pixels,) = self.clips(frames, [index], first_frames, geometry.num_frames).values()
                pieces.append(_Piece(starts[index], *self._posterior(pixels)))
            if clip.layer in first_frames and pieces[-1].frames != 1:
                raise ValueError(
                    f"the first frame of {clip.layer!r} encoded to {pieces[-1].frames} latent frames, expected 1"
                )
        return LatentPosterior(pieces, total, scale)

    def _joint_posterior(
        self, frames: Mapping[str, torch.Tensor], geometry: FrameGeometry, first_frames: Sequence[str] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        known = self.clips(frames, None, first_frames, geometry.num_frames)
        if not known:
            raise ValueError("the joint VAE pass needs the frames of at least one layer")
        like = next(iter(known.values()))
        batch = like.shape[0]
        shape = (batch, geometry.num_frames, 3, geometry.height, geometry.width)
        pieces = [known.get(i) for i in range(len(self.layout.clips))]
        if pieces[0] is None and self.layout.duplicate_first_frame:
            pieces[0] = like.new_zeros(batch, geometry.num_frames + 1, *shape[2:])
        video = torch.cat([p if p is not None else like.new_zeros(shape) for p in pieces], dim=1)
        with whole_video_batches(self.vae, frames=video.shape[1]):
            mean, std = self._posterior(video)
        if mean.shape[2] != geometry.latent_frames:
            raise ValueError(
                f"the joint encode gave {mean.shape[2]} latent frames, expected {geometry.latent_frames}"
            )
        return mean, std

    # -- decode --------------------------------------------------------------------------------
    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled ``[B, t, C, h, w]`` -> model-range frames ``[B, T, 3, H, W]`` (float32)."""
        video = latents.permute(0, 2, 1, 3, 4).to(dtype=self.vae.dtype) / self.geometry.scaling_factor
        return self.vae.decode(video).sample.permute(0, 2, 1, 3, 4).float()

    def decode(self, latents: torch.Tensor, geometry: FrameGeometry) -> dict[str, torch.Tensor]:
        """The full latent sequence ``[B, F, C, h, w]`` -> every layer's frames (foregrounds RGBA).

        The duplicated frame 0 (``duplicate_first_frame``) is dropped.
        """
        dup = int(self.layout.duplicate_first_frame)
        if self.layout.vae_pass == "joint":
            with whole_video_batches(self.vae, latent_frames=latents.shape[1]):
                video = self._vae_decode(latents)
            pixel_frames = [geometry.num_frames] * len(self.layout.clips)
            pixel_frames[0] += dup
            decoded = dict(enumerate(video.split(pixel_frames, dim=1)))
        else:
            decoded = {}
            offset_clips = {
                i
                for i, clip in enumerate(self.layout.clips)
                if self._offset_layer(self.layout.layer(clip.layer))
            }
            for index, clip_latents in enumerate(latents.split(list(geometry.clip_latent_frames), dim=1)):
                if index not in offset_clips:
                    decoded[index] = self._vae_decode(clip_latents)
        if dup:
            decoded[0] = decoded[0][:, 1:]
        return self._layers(latents, geometry, decoded)

    def _layers(
        self, latents: torch.Tensor, geometry: FrameGeometry, decoded: Mapping[int, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        clips = latents.split(list(geometry.clip_latent_frames), dim=1)
        layers: dict[str, torch.Tensor] = {}
        for layer in self.layout.layers:
            indices = [i for i, clip in enumerate(self.layout.clips) if clip.layer == layer.name]
            if self._offset_layer(layer):
                rgba = self.transparent_vae.decode_rgba(self.vae, clips[indices[0]])
                layers[layer.name] = rgba.float().clamp(0, 1)
                continue
            by_content = {self.layout.clips[i].content: decoded[i] for i in indices}
            has_alpha = layer.transparent and self.layout.alpha != "rgb"
            layers[layer.name] = layer_frames(has_alpha, by_content)
        return layers
