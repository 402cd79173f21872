"""Training losses of the transparent VAE (LayerDiffuse paper, section 3.1, plus a video term).

* identity: the frozen base decoder must still decode the offset latent to the grey composite, so
  the latent distribution stays the one the diffusion model knows;
* reconstruction: the transparent decoder must recover the padded colour and the alpha;
* adversarial (optional): a PatchGAN discriminator with hinge losses sharpens edges;
* temporal (video, optional): frame-to-frame alpha changes must match the target's, against flicker.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def identity_loss(decoded: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
    """MSE between the base decoder's output of the offset latent and the grey composite (both ``[-1, 1]``)."""
    return F.mse_loss(decoded, grey)


def reconstruction_losses(
    predicted_rgba: torch.Tensor, padded_rgb: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(colour MSE against the padded colour, alpha MSE) of a predicted straight RGBA."""
    return F.mse_loss(predicted_rgba[:, :3], padded_rgb), F.mse_loss(predicted_rgba[:, 3:], alpha)


def alpha_temporal_loss(predicted_alpha: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """L1 between predicted and target frame-to-frame alpha changes, ``[B, 1, T, H, W]`` (T >= 2)."""
    if predicted_alpha.ndim != 5 or predicted_alpha.shape[2] < 2:
        raise ValueError(
            f"alpha_temporal_loss needs video alpha [B, 1, T>=2, H, W], got {tuple(predicted_alpha.shape)}"
        )
    return F.l1_loss(predicted_alpha.diff(dim=2), alpha.diff(dim=2))


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / LDM ``NLayerDiscriminator``) over RGBA frames: one logit per image patch.

    GroupNorm replaces BatchNorm so that small per-device batches behave. Video frames are judged one
    by one (fold them into the batch first).
    """

    def __init__(self, in_channels: int = 4, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = channels
        for n in range(1, num_layers + 1):
            out = channels * min(2**n, 8)
            layers += [
                nn.Conv2d(width, out, 4, stride=2 if n < num_layers else 1, padding=1, bias=False),
                nn.GroupNorm(min(32, out // 4), out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, rgba: torch.Tensor) -> torch.Tensor:
        """``[N, 4, H, W]`` RGBA in ``[0, 1]`` -> patch logits."""
        return self.net(rgba * 2 - 1)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``, halved as in taming-transformers."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """``-mean(D(fake))``."""
    return -fake_logits.mean()
