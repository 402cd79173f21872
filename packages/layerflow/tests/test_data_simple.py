"""The project's simple layout, its error policy, and the resize/crop transform."""

import json
import logging

import numpy as np
import pytest
import torch

from layerflow.codec import premultiply_onto_grey
from layerflow.data import FrameSampler, Preprocess, SampleError, SimpleLayoutDataset, collate_layered
from layerflow.data.testing import PROMPTS, layer_frames, write_simple_sample, write_video

NATIVE = Preprocess(height=24, width=32, frames=FrameSampler(num_frames=4, start="first"))


def expected_layers(layers, frames):
    fg = torch.from_numpy(layers["foreground"][frames]).permute(0, 3, 1, 2).float() / 255
    alpha = torch.from_numpy(layers["alpha"][frames])[:, None].float() / 255
    bg = torch.from_numpy(layers["background"][frames]).permute(0, 3, 1, 2).float() / 255
    return fg, alpha, bg


@pytest.mark.parametrize("separate_alpha", [False, True])
def test_reads_frames_and_computes_composite(tmp_path, separate_alpha):
    layers = write_simple_sample(tmp_path, "a", 6, separate_alpha=separate_alpha, fps=12, source="static")
    sample = SimpleLayoutDataset(tmp_path, NATIVE)[0]
    fg, alpha, bg = expected_layers(layers, [0, 1, 2, 3])
    visible = alpha > 0
    torch.testing.assert_close(sample.layers["foreground"].alpha, alpha)
    torch.testing.assert_close(sample.layers["foreground"].rgb * visible, fg * visible, atol=1e-6, rtol=0)
    torch.testing.assert_close(sample.layers["background"].rgb, bg)
    torch.testing.assert_close(
        sample.layers["composite"].rgb, alpha * fg + (1 - alpha) * bg, atol=1e-6, rtol=0
    )
    assert sample.prompts == PROMPTS and sample.source == "static" and sample.fps == 12


def test_reads_video_layers(tmp_path):
    layers = layer_frames(6)
    folder = tmp_path / "v"
    write_video(folder / "foreground.webm", layers["foreground"], alpha=layers["alpha"], fps=8)
    write_video(folder / "background.mp4", layers["background"], fps=8)
    (folder / "prompts.json").write_text(json.dumps(PROMPTS))
    sample = SimpleLayoutDataset(tmp_path, NATIVE)[0]
    _, alpha, bg = expected_layers(layers, [0, 1, 2, 3])
    assert sample.fps == 8
    torch.testing.assert_close(sample.layers["foreground"].alpha, alpha, atol=1.5 / 255, rtol=0)
    torch.testing.assert_close(sample.layers["background"].rgb, bg, atol=2.5 / 255, rtol=0)


def test_resize_center_crop_and_deterministic_windows(tmp_path):
    write_simple_sample(tmp_path, "a", 12)
    preprocess = Preprocess(height=16, width=16, frames=FrameSampler(num_frames=3, stride=2))
    dataset = SimpleLayoutDataset(tmp_path, preprocess, seed=5)
    first = dataset[0]
    assert first.layers["foreground"].rgb.shape == (3, 3, 16, 16) and first.fps == 4
    assert (
        float(first.layers["foreground"].rgb.min()) >= 0
        and float(first.layers["foreground"].alpha.max()) <= 1
    )
    torch.testing.assert_close(dataset[0].layers["composite"].rgb, first.layers["composite"].rgb)
    windows = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        windows.add(float(dataset[0].layers["background"].rgb.sum()))
    assert len(windows) > 1
    batch = collate_layered([dataset[0], dataset[0]])
    assert batch.layers["foreground"].alpha.shape == (2, 3, 1, 16, 16)


def test_premultiplied_resize_keeps_edges_clean(tmp_path):
    """Transparent pixels have garbage colour; a straight-colour resize would bleed it into the edge."""
    layers = write_simple_sample(tmp_path, "a", 4)
    rgba = np.concatenate([layers["foreground"], layers["alpha"][..., None]], -1)
    rgba[..., :3][rgba[..., 3] == 0] = 255  # white where invisible
    from PIL import Image

    for t in range(4):
        Image.fromarray(rgba[t], "RGBA").save(tmp_path / "a" / "foreground" / f"{t:04d}.png")
    preprocess = Preprocess(height=12, width=16, frames=FrameSampler(num_frames=4, start="first"))
    sample = SimpleLayoutDataset(tmp_path, preprocess)[0]
    fg = sample.layers["foreground"]
    grey = premultiply_onto_grey(fg.rgb, fg.alpha)
    edge = (sample.layers["foreground"].alpha > 0.05) & (sample.layers["foreground"].alpha < 0.95)
    source_max = torch.from_numpy(layers["foreground"]).float().max() / 255
    assert float(grey.max()) <= 1.0
    assert (
        float(sample.layers["foreground"].rgb[edge.expand_as(sample.layers["foreground"].rgb)].max())
        <= source_max + 1e-3
    )


def break_frame_count(root):
    (root / "b" / "background" / "0005.png").unlink()
    (root / "b" / "background" / "0004.png").unlink()


def write_bad_alpha(root):
    from PIL import Image

    for t in range(6):
        Image.fromarray(np.full((24, 32), 1, np.uint8), "L").save(root / "b" / "alpha" / f"{t:04d}.png")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: (root / "b" / "background" / "0002.png").unlink(), "missing"),
        (break_frame_count, "differ in length"),
        (lambda root: (root / "b" / "background" / "0003.png").write_bytes(b"not a png"), "cannot decode"),
        (write_bad_alpha, "object-id mask"),
        (lambda root: (root / "b" / "prompts.json").write_text("{}"), "'foreground'"),
    ],
)
def test_bad_samples_raise_or_skip(tmp_path, caplog, breakage, message):
    write_simple_sample(tmp_path, "a", 6)
    write_simple_sample(tmp_path, "b", 6, separate_alpha=True, seed=1)
    breakage(tmp_path)
    with pytest.raises(SampleError, match=message) as raised:
        SimpleLayoutDataset(tmp_path, NATIVE)[1]
    assert raised.value.sample_id == "b"
    with caplog.at_level(logging.WARNING):
        dataset = SimpleLayoutDataset(tmp_path, NATIVE, on_error="skip")
        samples = [dataset[i].sample_id for i in range(len(dataset))]
    assert "b" not in samples and samples[0] == "a"
    assert dataset.skips.sample_ids[:1] == ["b"] and message in str(dataset.skips.skipped[0])
    assert "skipping sample 'b'" in caplog.text


def test_validate_drops_bad_samples_once(tmp_path):
    write_simple_sample(tmp_path, "a", 6)
    write_simple_sample(tmp_path, "b", 6, seed=1)
    (tmp_path / "b" / "foreground" / "0001.png").write_bytes(b"corrupt")
    dataset = SimpleLayoutDataset(tmp_path, NATIVE, on_error="skip")
    failures = dataset.validate(progress=False)
    assert [f.sample_id for f in failures] == ["b"] and len(dataset) == 1
    with pytest.raises(ValueError, match="on_error"):
        SimpleLayoutDataset(tmp_path, NATIVE, on_error="ignore")  # type: ignore[arg-type]


def test_dataloader_workers_give_the_same_batches(tmp_path):
    """Draws depend on (seed, epoch, index) only, so worker processes change nothing."""
    from torch.utils.data import DataLoader

    for i in range(4):
        write_simple_sample(tmp_path, f"s{i}", 8, seed=i)
    preprocess = Preprocess(height=12, width=12, frames=FrameSampler(num_frames=3))
    dataset = SimpleLayoutDataset(tmp_path, preprocess, seed=3)
    dataset.set_epoch(2)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate_layered)
        batches[workers] = list(loader)
    for single, parallel in zip(batches[0], batches[2]):
        assert single.sample_ids == parallel.sample_ids
        torch.testing.assert_close(single.layers["composite"].rgb, parallel.layers["composite"].rgb)


def test_reads_several_foregrounds_in_depth_order(tmp_path):
    from layerflow.data.testing import write_layered_sample

    stored = write_layered_sample(tmp_path, "two", 6)
    sample = SimpleLayoutDataset(tmp_path, NATIVE)[0]
    assert [(n, layer.role) for n, layer in sample.layers.items()] == [
        ("near", "foreground"), ("far", "foreground"), ("bg", "background"), ("blend", "composite")
    ]  # fmt: skip
    assert sample.prompts["far"] == "the far layer"

    def unit(array):
        tensor = torch.from_numpy(np.ascontiguousarray(array[:4])).float() / 255
        return tensor[:, None] if tensor.dim() == 3 else tensor.permute(0, 3, 1, 2)

    near_a, far_a, bg = unit(stored["near_alpha"]), unit(stored["far_alpha"]), unit(stored["bg"])
    torch.testing.assert_close(sample.layers["near"].alpha, near_a)
    torch.testing.assert_close(sample.layers["far"].alpha, far_a)
    near, far = unit(stored["near"]), unit(stored["far"])
    # Oracle: "over" by hand, near over far over the background.
    expected = near_a * near + (1 - near_a) * (far_a * far + (1 - far_a) * bg)
    torch.testing.assert_close(sample.layers["blend"].rgb, expected, atol=1e-6, rtol=0)


def test_bad_layer_list_in_meta_names_the_sample(tmp_path):
    write_simple_sample(tmp_path, "a", 4, layers=[{"name": "fg", "role": "sky"}])
    with pytest.raises(SampleError, match=r"'a'.*meta.json: layers: .*role must be one of"):
        SimpleLayoutDataset(tmp_path, NATIVE)
