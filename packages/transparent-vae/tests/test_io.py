from __future__ import annotations

import pytest
import torch
from PIL import Image

from transparent_vae import read_rgba, read_rgba_sequence, write_rgba, write_rgba_sequence


def _quantised(*shape: int) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0)).float() / 255


def test_rgba_png_round_trip_is_exact_for_8_bit_values(tmp_path):
    rgba = _quantised(4, 7, 9)
    path = write_rgba(rgba, tmp_path / "a.png")
    assert torch.equal(read_rgba(path), rgba)
    assert Image.open(path).mode == "RGBA"
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves nothing behind


def test_sequence_round_trip_in_natural_order(tmp_path):
    video = _quantised(4, 12, 5, 6)
    write_rgba_sequence(video, tmp_path, name="f{}.png")  # f2.png must come before f10.png
    assert torch.equal(read_rgba_sequence(tmp_path), video)


def test_rgb_files_are_opaque_and_size_mismatches_are_reported(tmp_path):
    Image.new("RGB", (4, 3), (255, 0, 0)).save(tmp_path / "0.png")
    frame = read_rgba(tmp_path / "0.png")
    assert frame.shape == (4, 3, 4) and torch.equal(frame[3], torch.ones(3, 4))
    Image.new("RGBA", (5, 3)).save(tmp_path / "1.png")
    with pytest.raises(ValueError, match=r"1\.png is 5x3, but .*0\.png is 4x3"):
        read_rgba_sequence(tmp_path)
    with pytest.raises(ValueError, match=r"expects \[4, H, W\]"):
        write_rgba(torch.rand(3, 4, 4), tmp_path / "x.png")
