"""The official LayerFlow layout (DAVIS and YoutubeVOS styles) on generated fixtures."""

import json

import numpy as np
import pytest
import torch

from layerflow.codec import premultiply_onto_grey
from layerflow.data import FrameSampler, OfficialLayoutDataset, Preprocess, SampleError
from layerflow.data.testing import META_PROMPTS, write_official

NATIVE = Preprocess(height=24, width=32, frames=FrameSampler(num_frames=16, official=True, start="first"))


@pytest.mark.parametrize("style", ["davis", "youtubevos"])
def test_reads_official_layout(tmp_path, style):
    layers = write_official(tmp_path, style, {"dog": 20, "cat": 16}, repeat="dog")
    dataset = OfficialLayoutDataset(tmp_path, NATIVE)
    assert dataset.style == style
    assert dataset.sample_ids == ["dog", "cat", "dog*1"]
    sample = dataset[0]
    frames = list(range(15))
    frames.insert(0, 0)  # linspace(0, 14, 16) duplicates the first frame
    dog = layers["dog"]
    alpha = torch.from_numpy(dog["alpha"][frames])[:, None].float() / 255
    composite = torch.from_numpy(dog["composite"][frames]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(sample.layers["foreground"].alpha, alpha)
    torch.testing.assert_close(sample.layers["composite"].rgb, composite)
    torch.testing.assert_close(sample.layers["foreground"].rgb * alpha, composite * alpha)  # fg = bl * mask
    assert sample.prompts == {
        "foreground": "a dog walking",
        "background": "a grassy field",
        "composite": "a dog in a field",
    }
    assert sample.source == "video" and sample.fps == 8
    torch.testing.assert_close(
        dataset[2].layers["foreground"].alpha, sample.layers["foreground"].alpha
    )  # "dog*1" reads the dog folders


def test_davis_grey_foreground_matches_model_input(tmp_path):
    """The shipped ``fg/`` folder is bl premultiplied onto grey: our model input must reproduce it."""
    from PIL import Image

    write_official(tmp_path, "davis", {"dog": 16})
    sample = OfficialLayoutDataset(tmp_path, NATIVE)[0]
    shipped = torch.from_numpy(np.array(Image.open(tmp_path / "dog" / "fg" / "0003.png")))
    fg = sample.layers["foreground"]
    ours = premultiply_onto_grey(fg.rgb, fg.alpha)[4] * 255  # frame 4 of the sample is file 0003
    torch.testing.assert_close(ours.permute(1, 2, 0), shipped.float(), atol=0.51, rtol=0)


def test_object_selection_mask_resize_and_errors(tmp_path):
    write_official(tmp_path, "youtubevos", {"car": 16})
    meta_path = tmp_path / "meta_test.json"
    meta = json.loads(meta_path.read_text())
    entry = meta["videos"]["car"]
    entry["objects"]["2"] = {"frames": [f"{t:04d}" for t in range(8)]}
    entry["max_id"] = "2"
    meta["videos"]["broken"] = {**entry, "bl_prompt": ""}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SampleError, match="bl_prompt"):
        OfficialLayoutDataset(tmp_path, NATIVE)
    dataset = OfficialLayoutDataset(tmp_path, NATIVE, on_error="skip")
    assert dataset.sample_ids == ["car"] and dataset.skips.sample_ids == ["broken"]
    assert dataset[0].num_frames == 16  # 8 frames of object 2, sampled officially (linspace over 7)
    # A half-size mask is resized to the frame size, as the official cv2.resize does.
    from PIL import Image

    for path in (tmp_path / "mask" / "car").iterdir():
        Image.open(path).resize((16, 12)).save(path)
    assert dataset[0].layers["foreground"].alpha.shape == (16, 1, 24, 32)
    (tmp_path / "impainting" / "car" / "0005.png").unlink()
    with pytest.raises(SampleError, match="frame 0005 is missing"):
        OfficialLayoutDataset(tmp_path, NATIVE, meta_file=meta_path)
    assert set(META_PROMPTS) <= set(entry)
