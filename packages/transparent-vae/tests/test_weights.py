"""Import of LayerDiffuse weights, checked against the reference networks built with diffusers' blocks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from transparent_vae import (
    export_layerdiffuse_state_dict,
    load_layerdiffuse_decoder,
    load_layerdiffuse_encoder,
)

diffusers_blocks = pytest.importorskip("diffusers.models.unets.unet_2d_blocks")


class ReferenceUNet1024(nn.Module):
    """LayerDiffuse's UNet1024 (``lib_layerdiffuse/vae.py``) at a tiny width, from diffusers' blocks."""

    def __init__(
        self, channels=(8, 8, 16, 16, 16), attention=(False, False, False, True, True), latent_channels=4
    ):
        super().__init__()
        groups, head_dim, layers = 4, 8, 2
        common = {
            "temb_channels": None,
            "resnet_eps": 1e-5,
            "resnet_act_fn": "silu",
            "resnet_groups": groups,
            "attention_head_dim": head_dim,
            "resnet_time_scale_shift": "default",
            "dropout": 0.0,
        }
        self.conv_in = nn.Conv2d(3, channels[0], 3, padding=1)
        self.latent_conv_in = nn.Conv2d(latent_channels, channels[2], 1)
        self.down_blocks = nn.ModuleList()
        out = channels[0]
        for i, width in enumerate(channels):
            inp, out = out, width
            self.down_blocks.append(
                diffusers_blocks.get_down_block(
                    "AttnDownBlock2D" if attention[i] else "DownBlock2D",
                    num_layers=layers,
                    in_channels=inp,
                    out_channels=out,
                    add_downsample=i < len(channels) - 1,
                    downsample_padding=1,
                    downsample_type="conv",
                    **common,
                )
            )
        self.mid_block = diffusers_blocks.UNetMidBlock2D(
            in_channels=channels[-1],
            temb_channels=None,
            dropout=0.0,
            resnet_eps=1e-5,
            resnet_act_fn="silu",
            output_scale_factor=1,
            resnet_time_scale_shift="default",
            attention_head_dim=head_dim,
            resnet_groups=groups,
            attn_groups=None,
            add_attention=True,
        )
        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(channels))
        out = reversed_channels[0]
        for i in range(len(channels)):
            prev, out = out, reversed_channels[i]
            inp = reversed_channels[min(i + 1, len(channels) - 1)]
            self.up_blocks.append(
                diffusers_blocks.get_up_block(
                    "AttnUpBlock2D" if attention[len(channels) - 1 - i] else "UpBlock2D",
                    num_layers=layers + 1,
                    in_channels=inp,
                    out_channels=out,
                    prev_output_channel=prev,
                    add_upsample=i < len(channels) - 1,
                    upsample_type="conv",
                    **common,
                )
            )
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=1e-5)
        self.conv_out = nn.Conv2d(channels[0], 4, 3, padding=1)

    def forward(self, x, latent):
        sample_latent = self.latent_conv_in(latent)
        sample = self.conv_in(x)
        skips = (sample,)
        for i, block in enumerate(self.down_blocks):
            if i == 3:
                sample = sample + sample_latent
            sample, res = block(hidden_states=sample, temb=None)
            skips += res
        sample = self.mid_block(sample, None)
        for block in self.up_blocks:
            res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            sample = block(sample, res, None)
        return self.conv_out(torch.nn.functional.silu(self.conv_norm_out(sample)))


class ReferenceEncoder(nn.Module):
    """LayerDiffuse's ``LatentTransparencyOffsetEncoder``: ``self.blocks = nn.Sequential(...)``."""

    def __init__(self, blocks: nn.Sequential):
        super().__init__()
        self.blocks = blocks

    def forward(self, x):
        return self.blocks(x)


def _reference_encoder(latent_channels=4):
    widths = [(4, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256)]
    layers = []
    for i, (a, b) in enumerate(widths):
        layers += [nn.Conv2d(a, b, 3, stride=2 if i in (2, 4, 6) else 1, padding=1), nn.SiLU()]
    layers.append(nn.Conv2d(256, latent_channels, 3, padding=1))
    return ReferenceEncoder(nn.Sequential(*layers))


def _randomised(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return module


def test_decoder_import_reproduces_the_reference_unet(tmp_path):
    reference = _randomised(ReferenceUNet1024(), 0).eval()
    path = tmp_path / "vae_transparent_decoder.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    decoder = load_layerdiffuse_decoder(path).eval()
    pixels, latent = torch.rand(2, 3, 64, 64), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = reference(pixels, latent).clamp(0, 1)  # (alpha, R, G, B)
        got = decoder(pixels, latent)  # (R, G, B, alpha)
    torch.testing.assert_close(got, expected[:, [1, 2, 3, 0]], rtol=1e-4, atol=1e-5)
    # Export writes the released naming back, tensor for tensor.
    exported = export_layerdiffuse_state_dict(decoder)
    assert exported.keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(exported[key], value), key


def test_encoder_import_reproduces_the_reference_and_warm_starts_video(tmp_path):
    reference = _randomised(_reference_encoder(16), 1).eval()
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    encoder = load_layerdiffuse_encoder(path)
    assert encoder.latent_channels == 16 and encoder.config["block_channels"] == [32, 64, 128, 256]
    features = torch.rand(1, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(features), reference(features))
        video = load_layerdiffuse_encoder(path, temporal_downsamples=2)
        torch.testing.assert_close(
            video(features[:, :, None])[:, :, 0], reference(features), rtol=1e-4, atol=1e-5
        )
    assert export_layerdiffuse_state_dict(encoder).keys() == reference.state_dict().keys()
    with pytest.raises(ValueError, match="temporal layers"):
        export_layerdiffuse_state_dict(video)


def test_import_errors_name_the_key_and_the_file(tmp_path):
    state = {k: v.contiguous() for k, v in ReferenceUNet1024().state_dict().items()}
    broken = dict(state)
    del broken["down_blocks.1.resnets.0.conv2.weight"]
    broken["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path))
    with pytest.raises(
        ValueError, match=r"broken\.safetensors.*down_blocks\.1\.resnets\.0\.conv2\.weight.*extra\.weight"
    ):
        load_layerdiffuse_decoder(path)
    with pytest.raises(ValueError, match="key 'conv_in.weight' is missing"):
        load_layerdiffuse_decoder({k: v for k, v in state.items() if k != "conv_in.weight"})
    torch.save(_reference_encoder().state_dict(), tmp_path / "encoder.pth")
    assert load_layerdiffuse_encoder(tmp_path / "encoder.pth").latent_channels == 4
    with pytest.raises(ValueError, match="blocks.0, blocks.2"):
        load_layerdiffuse_encoder({"blocks.1.weight": torch.zeros(1)})
