"""The project's own layout: one folder per sample with layer frame folders or videos.

```
ROOT/<sample_id>/
  prompts.json    {"foreground": "...", "background": "...", "composite": "..."}
  meta.json       {"source": "video" | "static", "fps": 8}          (optional)
  foreground/0000.png ...   RGBA (straight alpha), or RGB with alpha/0000.png ... (grey)
  background/0000.png ...   RGB (.png or .jpg)
  composite/0000.png ...    RGB, optional: computed exactly from the layers when missing
```
Any layer may instead be a video file beside the folders (``foreground.webm`` VP9 with alpha,
``background.mp4``, ``alpha.mp4``, ``composite.mp4``).

Several foregrounds: ``meta.json`` lists the layers in depth order (front to back) in the form of
``model_index.json``'s layout, ``"layers": [{"name": "near", "role": "foreground"}, ...]``; each
layer is a folder (or video) of its name, a transparent layer RGBA or RGB with ``<name>_alpha/``,
``prompts.json`` has one prompt per layer name, and a missing composite is computed exactly, each
foreground over the layers behind it.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np

from layerflow.json_files import special_file
from layerflow.layout import LayerLayout, LayerSpec
from layerflow.media import VIDEO_SUFFIXES, FrameMode, find_file, video_fps

from .base import LayeredDataset, LayerFile, LayerFiles, build_sample, file_stats, read_clip, sample_folders
from .errors import OnError, SampleError
from .frames import ImageSequence, VideoSequence, open_layer, read_every_frame
from .sample import SOURCES, LayeredSample, Source
from .transforms import Preprocess

DEFAULT_FPS = 8.0
#: The layers of a simple-layout sample (and the keys of its ``prompts.json``).
LAYER_NAMES: tuple[str, ...] = tuple(spec.name for spec in LayerLayout.official().layers)


def find_layer(folder: Path, name: str) -> Path | None:
    """``folder/name/`` (frames) or ``folder/name.<video suffix>``, whichever exists (frames first)."""
    if (folder / name).is_dir():
        return folder / name
    return find_file(folder, name, VIDEO_SUFFIXES)


def read_json(path: Path, sample_id: str) -> dict[str, Any]:
    if kind := special_file(path):
        raise SampleError(sample_id, f"{path} is {kind}, not a JSON file")
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise SampleError(sample_id, f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SampleError(sample_id, f"{path} is not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise SampleError(sample_id, f"{path} must hold a JSON object, got {type(content).__name__}")
    return content


def read_prompts(path: Path, sample_id: str, names: tuple[str, ...] = LAYER_NAMES) -> dict[str, str]:
    """The prompts of layers ``names`` from ``prompts.json``, each a non-empty string (whitespace stripped)."""
    content = read_json(path, sample_id)
    prompts = {}
    for name in names:
        text = content.get(name)
        if not isinstance(text, str) or not text.strip():
            raise SampleError(sample_id, f"{path}: key {name!r} must be a non-empty string, got {text!r}")
        prompts[name] = text.strip()
    return prompts


def open_required(folder: Path, name: str, mode: FrameMode, sample_id: str) -> ImageSequence | VideoSequence:
    path = find_layer(folder, name)
    if path is None:
        raise SampleError(sample_id, f"layer {name!r} is missing: no {folder / name}/ nor {name}.<video>")
    return open_layer(path, mode)


def matte_name(layer: str) -> str:
    """The separate matte of a transparent layer: ``alpha`` for ``foreground``, else ``<layer>_alpha``."""
    return "alpha" if layer == "foreground" else f"{layer}_alpha"


def open_foreground(
    folder: Path, sample_id: str, name: str = "foreground"
) -> tuple[ImageSequence | VideoSequence, ImageSequence | VideoSequence | None]:
    """RGBA layer ``name``, or RGB plus its separate matte (:func:`matte_name`) when one exists."""
    alpha_path = find_layer(folder, matte_name(name))
    if alpha_path is None:
        return open_required(folder, name, "rgba", sample_id), None
    return open_required(folder, name, "rgb", sample_id), open_layer(alpha_path, "alpha")


def read_layer_specs(meta: dict[str, Any], sample_id: str) -> tuple[LayerSpec, ...]:
    """``meta.json``'s ``layers`` (the form of ``model_index.json``'s layout layers), default :data:`LAYER_NAMES`."""
    entries = meta.get("layers")
    if entries is None:
        return LayerLayout.official().layers
    try:
        return LayerLayout.from_dict({"layers": entries}).layers
    except ValueError as error:
        raise SampleError(sample_id, f"meta.json: layers: {error}") from None


class SimpleLayoutDataset(LayeredDataset[Path]):
    """Reads the project's simple layout (see the module docstring); one sample per sub-folder.

    Structural problems (missing layer, bad ``prompts.json``, frame gaps) are found when the dataset
    is built and follow ``on_error`` there; decoding problems follow it when a sample is loaded.
    """

    def __init__(
        self,
        root: str | Path,
        preprocess: Preprocess | None = None,
        *,
        on_error: OnError = "raise",
        seed: int = 0,
    ):
        super().__init__(preprocess, on_error=on_error, seed=seed)
        self.root = Path(root)
        self._collect((folder.name, partial(self._checked, folder)) for folder in sample_folders(self.root))

    def _checked(self, folder: Path) -> Path:
        self._open(folder)
        return folder

    def _open(self, folder: Path) -> LayerFiles:
        sample_id = folder.name
        meta = read_json(folder / "meta.json", sample_id) if (folder / "meta.json").exists() else {}
        source = meta.get("source", "video")
        if source not in SOURCES:
            raise SampleError(sample_id, f"meta.json: source must be one of {SOURCES}, got {source!r}")
        specs = read_layer_specs(meta, sample_id)
        layers: dict[str, LayerFile] = {}
        for spec in specs:
            if spec.role == "foreground":
                layers[spec.name] = LayerFile(spec.role, *open_foreground(folder, sample_id, spec.name))
            elif spec.role == "background":
                layers[spec.name] = LayerFile(spec.role, open_required(folder, spec.name, "rgb", sample_id))
        composites = [spec.name for spec in specs if spec.role == "composite"]
        if len(composites) != 1:
            raise SampleError(sample_id, f"meta.json: layers need exactly one composite, got {composites}")
        composite_path = find_layer(folder, composites[0])
        first = next(iter(layers.values())).color
        fps = meta.get("fps")
        if fps is None:
            fps = video_fps(first.path) if isinstance(first, VideoSequence) else DEFAULT_FPS
        if not isinstance(fps, (int, float)) or fps <= 0:
            raise SampleError(sample_id, f"meta.json: fps must be a positive number, got {fps!r}")
        return LayerFiles(
            layers=layers,
            composite=open_layer(composite_path, "rgb") if composite_path is not None else None,
            composite_name=composites[0],
            prompts=read_prompts(folder / "prompts.json", sample_id, tuple(spec.name for spec in specs)),
            source=cast(Source, source),
            fps=float(fps),
        )

    def _record_id(self, record: int) -> str:
        return self.records[record].name

    def _check_stored(self, record: int) -> None:
        for name, sequence in self._open(self.records[record]).sequences().items():
            read_every_frame(name, sequence)

    def _load(self, record: int, rng: np.random.Generator) -> LayeredSample:
        folder = self.records[record]
        files = self._open(folder)
        layers = read_clip(folder.name, files, self.preprocess, rng)
        stride = self.preprocess.frames.effective_stride(files.fps)
        return build_sample(
            folder.name,
            layers,
            self.preprocess,
            prompts=files.prompts,
            source=files.source,
            fps=files.fps / stride,
        )

    def _fingerprint_payload(self) -> dict[str, Any]:
        files = []
        for folder in self.records:
            layer_files = self._open(folder).paths() + [folder / "prompts.json"]
            layer_files += [folder / "meta.json"] if (folder / "meta.json").exists() else []
            files.append(file_stats(layer_files, self.root))
        return {"root": str(self.root.resolve()), "files": files}
