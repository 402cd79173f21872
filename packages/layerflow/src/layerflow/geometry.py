"""Model geometry: the one place that knows how pixels, latents and tokens relate.

Built from complete VAE and transformer configs (:mod:`layerflow.models.configs` fills a saved
config's missing keys with the model class's own default, never a number written here), it answers every size question the pipeline, CLI, converter, trainer and
demo ask: compression factors, latent size, patch, tokens per latent frame, text tokens per prompt,
which frame counts and sizes a layout can run, and how many latent frames each clip gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .layout import LayerLayout

#: Frames per clip of the official data (``max_num_frames: 16``): the default clip length.
DEFAULT_CLIP_FRAMES = 16


@dataclass(frozen=True)
class FrameGeometry:
    """One run's sizes, checked against a :class:`ModelGeometry` and a layout.

    Attributes:
        num_frames, height, width: pixel frames per clip and frame size.
        latent_height, latent_width: latent frame size.
        clip_latent_frames: latent frames of each clip in layout order (the first clip has one
            more with ``duplicate_first_frame``).
        tokens_per_latent_frame: video tokens of one latent frame.
    """

    num_frames: int
    height: int
    width: int
    latent_height: int
    latent_width: int
    clip_latent_frames: tuple[int, ...]
    tokens_per_latent_frame: int

    @property
    def latent_frames(self) -> int:
        """Latent frames of the whole sequence (every clip)."""
        return sum(self.clip_latent_frames)

    @property
    def clip_tokens(self) -> tuple[int, ...]:
        return tuple(frames * self.tokens_per_latent_frame for frames in self.clip_latent_frames)


@dataclass(frozen=True)
class ModelGeometry:
    """Sizes fixed by the VAE and transformer configs.

    Attributes:
        spatial_compression, temporal_compression: the VAE's factors (CogVideoX: 8, 4).
        latent_channels: channels of a latent frame.
        scaling_factor: the VAE latent scale (CogVideoX-2B: 1.15258426).
        patch_size: transformer patch (2): a latent frame is ``(h / p) * (w / p)`` tokens.
        sample_height, sample_width: latent size the transformer was configured for (60 x 90).
        text_tokens_per_prompt: tokens of one layer prompt (T5: 226).
        prompt_slots: layer prompts the transformer holds (``num_layer_prompts``).
    """

    spatial_compression: int
    temporal_compression: int
    latent_channels: int
    scaling_factor: float
    patch_size: int
    sample_height: int
    sample_width: int
    text_tokens_per_prompt: int
    prompt_slots: int

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def from_configs(cls, vae: Mapping[str, Any], transformer: Mapping[str, Any]) -> ModelGeometry:
        """From complete VAE and transformer configs (:func:`layerflow.models.configs.model_geometry`
        fills a saved config's missing keys with the model classes' defaults first)."""
        return cls(
            spatial_compression=2 ** (len(vae["block_out_channels"]) - 1),
            temporal_compression=int(vae["temporal_compression_ratio"]),
            latent_channels=int(vae["latent_channels"]),
            scaling_factor=float(vae["scaling_factor"]),
            patch_size=int(transformer["patch_size"]),
            sample_height=int(transformer["sample_height"]),
            sample_width=int(transformer["sample_width"]),
            text_tokens_per_prompt=int(transformer["max_text_seq_length"]),
            prompt_slots=int(transformer["num_layer_prompts"]),
        )

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def default_height(self) -> int:
        return self.sample_height * self.spatial_compression

    @property
    def default_width(self) -> int:
        return self.sample_width * self.spatial_compression

    def tokens_per_latent_frame(
        self, latent_height: int | None = None, latent_width: int | None = None
    ) -> int:
        h = self.sample_height if latent_height is None else latent_height
        w = self.sample_width if latent_width is None else latent_width
        return (h // self.patch_size) * (w // self.patch_size)

    def clip_latent_frames(self, layout: LayerLayout, num_frames: int) -> tuple[int, ...]:
        """Latent frames of each clip of ``layout`` for ``num_frames`` pixel frames per clip."""
        t = self.temporal_compression
        per_clip = -(-num_frames // t)  # the causal VAE keeps ceil(n / t) latents
        frames = [per_clip] * len(layout.clips)
        if layout.duplicate_first_frame:
            frames[0] = -(-(num_frames + 1) // t) if layout.vae_pass == "per_clip" else per_clip + 1
        return tuple(frames)

    def latent_spans(self, pixel_frames: int) -> list[int]:
        """Pixel frames each latent frame of a ``pixel_frames``-frame causal VAE encode covers.

        CogVideoX's encoder halves time ``log2(t)`` times, keeping an odd count's first frame alone
        (so with ``n = 4k + 1`` frames latent 0 is frame 0 alone, with ``n = 4k`` frames 0..3).
        """
        spans = [1] * pixel_frames
        for _ in range(self.temporal_compression.bit_length() - 1):
            head = spans[: len(spans) % 2]
            rest = spans[len(head) :]
            spans = head + [a + b for a, b in zip(rest[::2], rest[1::2], strict=True)]
        return spans

    def first_latent_spans(self, layout: LayerLayout, num_frames: int) -> tuple[int, ...]:
        """Per clip of ``layout``, the pixel frames its first latent frame covers in the layout's VAE
        pass: a first-frame condition holds its frame over them (see :mod:`layerflow.codec`)."""
        dup = int(layout.duplicate_first_frame)
        lengths = [num_frames + (dup if i == 0 else 0) for i in range(len(layout.clips))]
        if layout.vae_pass == "per_clip":
            return tuple(self.latent_spans(length)[0] for length in lengths)
        spans = self.latent_spans(sum(lengths))
        firsts: list[int] = []
        start = covered = index = 0
        for length in lengths:
            while covered < start:
                covered += spans[index]
                index += 1
            firsts.append(spans[index])
            start += length
        return tuple(firsts)

    def check(
        self, num_frames: int, height: int, width: int, layout: LayerLayout | None = None
    ) -> FrameGeometry:
        """Check frames per clip and frame size for ``layout`` (default: the official one).

        The causal 3D VAE maps ``n`` frames to ``ceil(n / t)`` latents and decodes ``k`` latents to
        ``t * k`` frames (``k`` even) or ``t * (k - 1) + 1`` (``k`` odd). Per clip, a clip survives
        the round trip only with ``n % 2t`` in ``{0, 1}`` (``0`` when frame 0 is duplicated). In the
        joint pass the clips must also cut the video exactly at latent boundaries: ``n % t == 0``
        and an even number of latents over all clips (plus the duplicate's). Official: 16 frames.
        Raises ``ValueError`` naming the bad value and good ones.
        """
        layout = layout or LayerLayout.official()
        t = self.temporal_compression
        if not self.frames_ok(layout, num_frames):
            if layout.vae_pass == "joint":
                rule = (
                    f"a multiple of {t} giving an even number of latents over the {len(layout.clips)} clips"
                )
            else:
                rule = f"a multiple of {2 * t}" + (
                    "" if layout.duplicate_first_frame else " or a multiple plus one"
                )
            good = [n for n in range(1, 6 * t + 2) if self.frames_ok(layout, n)]
            raise ValueError(
                f"num_frames={num_frames} per clip does not survive the VAE's temporal compression x{t} "
                f"({layout.vae_pass} VAE pass): use {rule} (e.g. {good}; official clips are {DEFAULT_CLIP_FRAMES})"
            )
        multiple = self.spatial_compression * self.patch_size
        for name, size in (("height", height), ("width", width)):
            if size < multiple or size % multiple:
                raise ValueError(
                    f"{name}={size} must be a positive multiple of {multiple} "
                    f"(VAE spatial factor {self.spatial_compression} x transformer patch size {self.patch_size})"
                )
        latent_height, latent_width = height // self.spatial_compression, width // self.spatial_compression
        return FrameGeometry(
            num_frames=num_frames,
            height=height,
            width=width,
            latent_height=latent_height,
            latent_width=latent_width,
            clip_latent_frames=self.clip_latent_frames(layout, num_frames),
            tokens_per_latent_frame=self.tokens_per_latent_frame(latent_height, latent_width),
        )

    def frames_ok(self, layout: LayerLayout, num_frames: int) -> bool:
        """Whether ``num_frames`` per clip survives ``layout``'s VAE pass (see :meth:`check`)."""
        t = self.temporal_compression
        if layout.vae_pass == "joint":
            return num_frames >= t and num_frames % t == 0 and (len(layout.clips) * num_frames // t) % 2 == 0
        allowed = (0,) if layout.duplicate_first_frame else (0, 1)
        return num_frames >= 1 and num_frames % (2 * t) in allowed


def check_geometry(
    geometry: ModelGeometry, num_frames: int, height: int, width: int, layout: LayerLayout | None = None
) -> FrameGeometry:
    """Validate frames per clip and frame size for a model and layout; ``ValueError`` names the problem.

    The one public check shared by the pipeline, the CLI and training-config validation.
    """
    return geometry.check(num_frames, height, width, layout)
