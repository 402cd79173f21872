"""Writers of small datasets in every supported layout, for tests, examples and smoke runs.

The layers are smooth colour waves under a moving soft-edged square matte, so the values are known
exactly and every reader can be checked against them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

PROMPTS = {"foreground": "a red square", "background": "blue stripes", "composite": "a red square on stripes"}


def layer_frames(num_frames: int, height: int = 24, width: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """uint8 layers: fg colour [T,H,W,3], alpha [T,H,W] (a moving soft square), bg [T,H,W,3]."""
    time, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing="ij")
    phase = 0.7 * seed

    def smooth(a: float, b: float, c: float) -> np.ndarray:
        channels = [np.sin(a * x + b * y + c * time + phase + k) for k in range(3)]
        return ((np.stack(channels, -1) + 1.0) * 127.5).round().astype(np.uint8)

    fg = smooth(0.15, 0.05, 0.3)
    bg = smooth(0.04, 0.11, -0.2)
    alpha = np.zeros((num_frames, height, width), dtype=np.uint8)
    for t in range(num_frames):
        alpha[t, 4:14, 3 + t % 8 : 15 + t % 8] = 255
        alpha[t, 3, 3 + t % 8 : 15 + t % 8] = 128
    return {"foreground": fg, "alpha": alpha, "background": bg}


def write_frames(folder: Path, frames: np.ndarray, mode: str, suffix: str = ".png") -> None:
    """``0000.png, 0001.png, ...`` from uint8 frames in PIL ``mode``."""
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).convert(mode).save(folder / f"{t:04d}{suffix}")


def write_simple_sample(
    root: Path,
    sample_id: str,
    num_frames: int = 6,
    *,
    separate_alpha: bool = False,
    seed: int = 0,
    size: tuple[int, int] = (24, 32),
    **meta: object,
) -> dict[str, np.ndarray]:
    """One sample folder of the simple layout (RGBA foreground, or RGB + ``alpha/``); returns the layers."""
    folder = root / sample_id
    layers = layer_frames(num_frames, *size, seed=seed)
    if separate_alpha:
        write_frames(folder / "foreground", layers["foreground"], "RGB")
        write_frames(folder / "alpha", layers["alpha"], "L")
    else:
        rgba = np.concatenate([layers["foreground"], layers["alpha"][..., None]], axis=-1)
        write_frames(folder / "foreground", rgba, "RGBA")
    write_frames(folder / "background", layers["background"], "RGB")
    (folder / "prompts.json").write_text(json.dumps(PROMPTS))
    if meta:
        (folder / "meta.json").write_text(json.dumps(meta))
    return layers


def write_layered_sample(
    root: Path, sample_id: str, num_frames: int = 6, *, size: tuple[int, int] = (24, 32)
) -> dict:
    """A two-foreground simple-layout sample (``near`` RGBA in front of ``far`` RGB + ``far_alpha/``,
    background ``bg``, composite ``blend`` left out); returns the uint8 layers."""
    folder = root / sample_id
    near, far = layer_frames(num_frames, *size, seed=1), layer_frames(num_frames, *size, seed=2)
    far["alpha"] = np.ascontiguousarray(far["alpha"][:, ::-1, ::-1])  # another place than the near object
    write_frames(folder / "near", np.concatenate([near["foreground"], near["alpha"][..., None]], -1), "RGBA")
    write_frames(folder / "far", far["foreground"], "RGB")
    write_frames(folder / "far_alpha", far["alpha"], "L")
    write_frames(folder / "bg", near["background"], "RGB")
    names = (("near", "foreground"), ("far", "foreground"), ("bg", "background"), ("blend", "composite"))
    meta = {"layers": [{"name": name, "role": role} for name, role in names]}
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "prompts.json").write_text(json.dumps({name: f"the {name} layer" for name, _ in names}))
    return {
        "near": near["foreground"],
        "near_alpha": near["alpha"],
        "far": far["foreground"],
        "far_alpha": far["alpha"],
        "bg": near["background"],
    }


def write_video(path: Path, frames: np.ndarray, *, alpha: np.ndarray | None = None, fps: int = 8) -> None:
    """Lossless VP9 with alpha (``.webm``) when ``alpha`` is given, else lossless H.264 4:4:4 (``.mp4``)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        if alpha is not None:
            stream = container.add_stream("libvpx-vp9", rate=fps)
            stream.pix_fmt = "yuva420p"
            stream.options = {"lossless": "1"}
        else:
            stream = container.add_stream("libx264", rate=fps)
            stream.pix_fmt = "yuv444p"
            stream.options = {"qp": "0"}
        stream.height, stream.width = frames.shape[1:3]
        for t, frame in enumerate(frames):
            if alpha is not None:
                image = av.VideoFrame.from_ndarray(
                    np.concatenate([frame, alpha[t][..., None]], -1), format="rgba"
                )
            else:
                image = av.VideoFrame.from_ndarray(frame, format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


META_PROMPTS = {"fg_prompt": "a dog walking", "bg_prompt": " a grassy field", "bl_prompt": "a dog in a field"}


def write_official(root: Path, style: str, videos: dict[str, int], *, repeat: str | None = None) -> dict:
    """An official-layout root: meta JSON + DAVIS or YoutubeVOS folders; returns the per-video layers."""
    meta: dict = {"videos": {}}
    layers_by_video = {}
    for index, (vid, num_frames) in enumerate(videos.items()):
        layers = layer_frames(num_frames, seed=index)
        composite = (
            (
                layers["alpha"][..., None] / 255.0 * layers["foreground"]
                + (1 - layers["alpha"][..., None] / 255.0) * layers["background"]
            )
            .round()
            .astype(np.uint8)
        )
        layers["composite"] = composite
        layers_by_video[vid] = layers
        names = [f"{t:04d}" for t in range(num_frames)]
        entry = {"objects": {"1": {"frames": names}}, **META_PROMPTS, "max_id": "1"}
        if style == "davis":
            write_frames(root / vid / "bl", composite, "RGB")
            write_frames(root / vid / "bg", layers["background"], "RGB")
            write_frames(root / vid / "mask", layers["alpha"], "L")
            grey = composite * (layers["alpha"][..., None] / 255.0) + 127.5 * (
                1 - layers["alpha"][..., None] / 255.0
            )
            write_frames(root / vid / "fg", grey.round().astype(np.uint8), "RGB")
        else:
            entry["is_seg"] = "False"
            write_frames(root / "JPEGImages" / vid, composite, "RGB", ".png")
            write_frames(root / "impainting" / vid, layers["background"], "RGB", ".png")
            write_frames(root / "mask" / vid, layers["alpha"], "L", ".png")
        meta["videos"][vid] = entry
    if repeat is not None:
        meta["videos"][f"{repeat}*1"] = meta["videos"][repeat]
    name = "meta_fg2bg_test.json" if style == "davis" else "meta_test.json"
    (root / name).write_text(json.dumps(meta))
    return layers_by_video
