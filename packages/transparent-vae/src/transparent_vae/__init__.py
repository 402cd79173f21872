"""LayerDiffuse's latent-offset transparent VAE for images and video (LayerFlow).

A frozen RGB VAE carries alpha: :class:`LatentOffsetEncoder` adds a latent offset computed from
(alpha, padded RGB) inside the base posterior, and :class:`TransparentDecoder` recovers straight RGBA
from the base decoder's pixels plus the latent. :class:`TransparentVAE` ties them to a base VAE.
"""

from importlib.metadata import version as _version

from .alpha import (
    checkerboard,
    composite_over,
    grey_composite,
    pad_rgb,
    premultiply,
    split_rgba,
    unpremultiply,
)
from .base_vae import AutoencoderKLAdapter, BaseVAE, CogVideoXVAEAdapter, as_base_vae
from .decoder import TransparentDecoder
from .encoder import LatentOffsetEncoder
from .io import read_rgba, read_rgba_sequence, write_rgba, write_rgba_sequence
from .losses import PatchDiscriminator
from .synthetic import RGBAShapes, random_rgba_shapes
from .temporal import TemporalLayout
from .tiny_vae import TinyVAE
from .training import TrainingConfig, TrainingResult, load_checkpoint, train_transparent_vae
from .vae import OffsetLatents, TransparentVAE
from .weights import export_layerdiffuse_state_dict, load_layerdiffuse_decoder, load_layerdiffuse_encoder

__version__ = _version("transparent-vae")

__all__ = [
    "AutoencoderKLAdapter",
    "BaseVAE",
    "CogVideoXVAEAdapter",
    "LatentOffsetEncoder",
    "OffsetLatents",
    "PatchDiscriminator",
    "RGBAShapes",
    "TemporalLayout",
    "TinyVAE",
    "TrainingConfig",
    "TrainingResult",
    "TransparentDecoder",
    "TransparentVAE",
    "as_base_vae",
    "checkerboard",
    "composite_over",
    "export_layerdiffuse_state_dict",
    "grey_composite",
    "load_checkpoint",
    "load_layerdiffuse_decoder",
    "load_layerdiffuse_encoder",
    "pad_rgb",
    "premultiply",
    "random_rgba_shapes",
    "read_rgba",
    "read_rgba_sequence",
    "split_rgba",
    "train_transparent_vae",
    "unpremultiply",
    "write_rgba",
    "write_rgba_sequence",
]
