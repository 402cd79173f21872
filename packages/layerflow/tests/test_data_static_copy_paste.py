"""Static layered images and copy-paste synthesis."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from layerflow.data import CopyPasteDataset, FrameSampler, Preprocess, SampleError, StaticImageDataset
from layerflow.data.testing import PROMPTS, layer_frames, write_frames

PRE = Preprocess(height=24, width=32, frames=FrameSampler(num_frames=4))


def test_static_images_repeat_and_are_static(tmp_path):
    layers = layer_frames(1)
    folder = tmp_path / "img"
    folder.mkdir()
    Image.fromarray(
        np.concatenate([layers["foreground"][0], layers["alpha"][0][..., None]], -1), "RGBA"
    ).save(folder / "foreground.png")
    Image.fromarray(layers["background"][0]).save(folder / "background.jpg", quality=100)
    (folder / "prompts.json").write_text(json.dumps(PROMPTS))
    (tmp_path / "incomplete").mkdir()
    with pytest.raises(SampleError, match="foreground"):
        StaticImageDataset(tmp_path, PRE)
    dataset = StaticImageDataset(tmp_path, PRE, on_error="skip")
    sample = dataset[0]
    assert sample.source == "static" and sample.is_static and sample.num_frames == 4
    alpha = torch.from_numpy(layers["alpha"][0]).float()[None] / 255
    for t in range(4):
        torch.testing.assert_close(sample.layers["foreground"].alpha[t], alpha)
        torch.testing.assert_close(sample.layers["composite"].rgb[t], sample.layers["composite"].rgb[0])
    fg, bg = sample.layers["foreground"].rgb[0], sample.layers["background"].rgb[0]
    torch.testing.assert_close(sample.layers["composite"].rgb[0], alpha * fg + (1 - alpha) * bg)


def write_sources(root):
    for i in range(2):
        layers = layer_frames(6, seed=i)
        rgba = np.concatenate([layers["foreground"], layers["alpha"][..., None]], -1)
        write_frames(root / "fg" / f"obj{i}" / "foreground", rgba, "RGBA")
        (root / "fg" / f"obj{i}" / "prompts.json").write_text(json.dumps({"foreground": f"object {i}"}))
        write_frames(root / "bg" / f"scene{i}" / "background", layers["background"], "RGB")
        (root / "bg" / f"scene{i}" / "prompts.json").write_text(json.dumps({"background": f"scene {i}"}))


def test_copy_paste_composite_placement_and_determinism(tmp_path):
    write_sources(tmp_path)
    dataset = CopyPasteDataset(
        tmp_path / "fg", tmp_path / "bg", PRE, num_samples=6, scale_range=(0.3, 0.6), seed=1
    )
    sizes, positions = set(), set()
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample.source == "video"
        torch.testing.assert_close(
            sample.layers["composite"].rgb,
            sample.layers["foreground"].alpha * sample.layers["foreground"].rgb
            + (1 - sample.layers["foreground"].alpha) * sample.layers["background"].rgb,
        )
        rows = torch.nonzero(sample.layers["foreground"].alpha.amax(dim=(0, 1, 3)) > 0).flatten()
        cols = torch.nonzero(sample.layers["foreground"].alpha.amax(dim=(0, 1, 2)) > 0).flatten()
        height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert height <= 0.6 * 24 + 1 and width <= 0.6 * 32 + 1  # the object box fits the scale range
        sizes.add((height, width))
        positions.add((int(rows[0]), int(cols[0])))
        assert (
            sample.prompts["composite"]
            == f"{sample.prompts['foreground']}, in front of {sample.prompts['background']}"
        )
    assert len(sizes) > 1 and len(positions) > 1
    torch.testing.assert_close(dataset[3].layers["composite"].rgb, dataset[3].layers["composite"].rgb)
    other_seed = CopyPasteDataset(tmp_path / "fg", tmp_path / "bg", PRE, num_samples=6, seed=2)
    assert not torch.equal(other_seed[3].layers["foreground"].alpha, dataset[3].layers["foreground"].alpha)


def test_copy_paste_static_clips(tmp_path):
    write_sources(tmp_path)
    dataset = CopyPasteDataset(tmp_path / "fg", tmp_path / "bg", PRE, static=True)
    sample = dataset[0]
    assert sample.source == "static"
    for t in range(1, 4):
        torch.testing.assert_close(sample.layers["foreground"].rgb[t], sample.layers["foreground"].rgb[0])
    with pytest.raises(ValueError, match="scale_range"):
        CopyPasteDataset(tmp_path / "fg", tmp_path / "bg", PRE, scale_range=(0.5, 1.5))


def test_copy_paste_composites_several_foregrounds_in_depth_order(tmp_path):
    write_sources(tmp_path)
    dataset = CopyPasteDataset(
        tmp_path / "fg", tmp_path / "bg", PRE, num_samples=4, num_foregrounds=3, seed=3
    )
    for index in range(len(dataset)):
        sample = dataset[index]
        assert list(sample.layers) == [
            "foreground_0",
            "foreground_1",
            "foreground_2",
            "background",
            "composite",
        ]
        # Oracle: "over" by hand, back to front (foreground_2 is the farthest).
        expected = sample.layers["background"].rgb
        for name in ("foreground_2", "foreground_1", "foreground_0"):
            layer = sample.layers[name]
            expected = layer.alpha * layer.rgb + (1 - layer.alpha) * expected
        torch.testing.assert_close(sample.layers["composite"].rgb, expected)
        assert all(float(sample.layers[f"foreground_{i}"].alpha.max()) > 0.5 for i in range(3))
        fg_prompts = [sample.prompts[f"foreground_{i}"] for i in range(3)]
        assert all(p.startswith("object ") for p in fg_prompts)
        assert (
            sample.prompts["composite"]
            == f"{' and '.join(fg_prompts)}, in front of {sample.prompts['background']}"
        )
    with pytest.raises(ValueError, match="num_foregrounds"):
        CopyPasteDataset(tmp_path / "fg", tmp_path / "bg", PRE, num_foregrounds=0)
