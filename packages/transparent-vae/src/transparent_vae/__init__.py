"""LayerDiffuse's latent-offset transparent VAE for images and video (LayerFlow)."""

from importlib.metadata import version as _version

__version__ = _version("transparent-vae")
