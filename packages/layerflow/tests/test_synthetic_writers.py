"""The dataset writer produces the project's simple layout and the official LayerFlow layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from layerflow.synthetic import SyntheticConfig, SyntheticGenerator, sample_seed
from layerflow.synthetic.writers import generate_dataset, write_simple_sample

CONFIG = SyntheticConfig(num_frames=4, height=32, width=48)


def _png(path):
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    manifest = generate_dataset(root, num_train=2, num_heldout=1, config=CONFIG, seed=3, progress=False)
    return root, manifest


def test_manifest_lists_the_splits(dataset):
    root, manifest = dataset
    assert manifest["splits"] == {"train": ["train_00000", "train_00001"], "heldout": ["heldout_00000"]}
    assert json.loads((root / "dataset.json").read_text()) == manifest
    assert not [p for p in root.rglob(".*")], "temporary files were left behind"


def test_simple_layout_round_trips_the_sample_exactly(dataset):
    root, _ = dataset
    sample = SyntheticGenerator(CONFIG).generate(sample_seed(3, "train", 1), "train_00001")
    folder = root / "train" / "train_00001"
    assert json.loads((folder / "prompts.json").read_text()) == sample.prompts
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["source"] == sample.source and meta["fps"] == 8
    assert meta["synthetic"] == json.loads(json.dumps(sample.attributes.to_dict()))
    for t in range(4):
        mode, rgba = _png(folder / "foreground" / f"{t:04d}.png")
        assert mode == "RGBA" and rgba.shape == (32, 48, 4)
        expected = torch.cat([sample.foreground[t], sample.alpha[t]]).permute(1, 2, 0) * 255
        assert np.array_equal(rgba, expected.round().byte().numpy())
        mode, bg = _png(folder / "background" / f"{t:04d}.png")
        assert mode == "RGB" and np.array_equal(
            bg, (sample.background[t].permute(1, 2, 0) * 255).round().byte().numpy()
        )
        # The stored composite is the exact blend of the stored layers, up to its own rounding.
        mode, composite = _png(folder / "composite" / f"{t:04d}.png")
        a = rgba[..., 3:] / 255.0
        blend = a * rgba[..., :3] / 255.0 + (1 - a) * bg / 255.0
        assert mode == "RGB" and np.abs(composite / 255.0 - blend).max() <= 0.5 / 255 + 1e-9
    assert (root / "heldout" / "heldout_00000" / "composite" / "0003.png").is_file()


def test_official_davis_layout(dataset):
    root, _ = dataset
    davis = root / "official" / "train" / "DAVIS" / "480p"
    meta = json.loads((davis / "meta_fg2bg_test.json").read_text())
    assert json.loads((davis / "meta_seg_test.json").read_text()) == meta
    entry = meta["videos"]["train_00000"]
    # Key names and nesting as in the released DAVIS meta file.
    assert list(entry) == ["objects", "fg_prompt", "bg_prompt", "bl_prompt", "max_id"]
    assert entry["max_id"] == "1" and entry["objects"]["1"]["frames"] == ["0000", "0001", "0002", "0003"]
    prompts = json.loads((root / "train" / "train_00000" / "prompts.json").read_text())
    assert (entry["fg_prompt"], entry["bg_prompt"], entry["bl_prompt"]) == (
        prompts["foreground"],
        prompts["background"],
        prompts["composite"],
    )
    sample_dir = davis / "train_00000"
    assert sorted(p.name for p in sample_dir.iterdir()) == ["bg", "bl", "fg", "mask"]
    mask_mode, mask = _png(sample_dir / "mask" / "0002.png")
    fg_mode, fg = _png(sample_dir / "fg" / "0002.png")
    _, rgba = _png(root / "train" / "train_00000" / "foreground" / "0002.png")
    assert mask_mode == "L" and np.array_equal(mask, rgba[..., 3])
    a = rgba[..., 3:] / 255.0
    grey = a * rgba[..., :3] / 255.0 + 0.5 * (1 - a)  # premultiplied onto mid-grey
    assert fg_mode == "RGB" and np.abs(fg / 255.0 - grey).max() <= 0.5 / 255 + 1e-6
    _, bl = _png(sample_dir / "bl" / "0002.png")
    _, composite = _png(root / "train" / "train_00000" / "composite" / "0002.png")
    assert np.array_equal(bl, composite)


def test_official_youtubevos_layout(dataset):
    root, _ = dataset
    youtube = root / "official" / "heldout" / "YoutubeVOS"
    meta = json.loads((youtube / "meta_test.json").read_text())
    entry = meta["videos"]["heldout_00000"]
    assert entry["is_seg"] == "False" and entry["max_id"] == "1"
    assert {"objects", "fg_prompt", "bg_prompt", "bl_prompt"} <= set(entry)
    for kind in ("JPEGImages", "impainting", "mask"):
        names = sorted(p.name for p in (youtube / kind / "heldout_00000").iterdir())
        assert names == ["0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg"]
    mode, mask = _png(youtube / "mask" / "heldout_00000" / "0001.jpg")
    _, rgba = _png(root / "heldout" / "heldout_00000" / "foreground" / "0001.png")
    assert mode == "RGB" and mask.shape == (32, 48, 3)
    assert np.abs(mask[..., 0].astype(int) - rgba[..., 3]).mean() < 4  # JPEG, so approximately


def test_same_request_reuses_and_different_request_refuses(dataset, tmp_path):
    root, manifest = dataset
    stamp = (root / "train" / "train_00000" / "prompts.json").stat().st_mtime_ns
    assert generate_dataset(root, 2, 1, config=CONFIG, seed=3, progress=False) == manifest
    assert (root / "train" / "train_00000" / "prompts.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="seed"):
        generate_dataset(root, 2, 1, config=CONFIG, seed=4, progress=False)
    other = tmp_path / "other"
    generate_dataset(other, 2, 0, config=CONFIG, layouts=("simple",), progress=False)
    redone = generate_dataset(other, 1, 1, config=CONFIG, layouts=("simple",), overwrite=True, progress=False)
    assert redone["splits"] == {"train": ["train_00000"], "heldout": ["heldout_00000"]}
    assert sorted(p.name for p in (other / "train").iterdir()) == ["train_00000"]
    assert not (other / "official").exists()


def test_bad_requests_fail_before_writing(tmp_path):
    with pytest.raises(ValueError, match="layouts"):
        generate_dataset(tmp_path / "a", 1, 1, layouts=("webdataset",))
    with pytest.raises(ValueError, match="counts"):
        generate_dataset(tmp_path / "b", -1, 1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_rewriting_a_sample_replaces_it(tmp_path):
    generator = SyntheticGenerator(CONFIG)
    write_simple_sample(generator.generate(1, "s"), tmp_path)
    write_simple_sample(generator.generate(2, "s"), tmp_path)
    assert json.loads((tmp_path / "s" / "prompts.json").read_text()) == generator.generate(2).prompts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
