"""Write synthetic samples in the project's simple layout and in the official LayerFlow layout.

Simple layout (one folder per sample, splits as separate roots)::

    ROOT/<split>/<id>/prompts.json  meta.json  foreground/0000.png (RGBA)  background/  composite/

Official layout (as in the released LayerFlow data, one tree per split)::

    ROOT/official/<split>/DAVIS/480p/<id>/{fg,bg,bl,mask}/0000.png + meta_fg2bg_test.json, meta_seg_test.json
    ROOT/official/<split>/YoutubeVOS/{JPEGImages,impainting,mask}/<id>/0000.jpg + meta_test.json

DAVIS ``fg`` is the foreground premultiplied onto mid-grey (``a * fg + 0.5 * (1 - a)``), ``bl`` the
composite, ``mask`` an 8-bit L PNG of alpha; ``bg`` holds the true background (the released sample
ships a near-copy of ``bl`` there, which the official loader never reads). YoutubeVOS holds the
composite (``JPEGImages``), the background (``impainting``) and the mask as an RGB JPEG with three
equal channels, as in the released files. Every sample folder and meta file is written to a
temporary name and renamed into place, so an interrupted run never leaves a half-written sample.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from layerflow.atomic import atomic_directory, write_json_atomic
from layerflow.media.frames import to_uint8, write_frames

from .generator import SPLITS, SyntheticConfig, SyntheticGenerator, SyntheticSample

LAYOUTS: tuple[str, ...] = ("simple", "official")
DATASET_MANIFEST = "dataset.json"
JPEG_QUALITY = 95


# Fast PNG compression: these folders are written once per sample and read many times.
_PNG = {"compress_level": 1}
_JPEG = {"quality": JPEG_QUALITY}


def write_simple_sample(sample: SyntheticSample, root: str | Path) -> Path:
    """Write one sample as ``root/<sample_id>/`` in the project's simple layout; returns the folder."""
    target = Path(root) / sample.sample_id
    with atomic_directory(target, overwrite=True) as folder:
        rgba = torch.cat([sample.foreground, sample.alpha], dim=1)
        write_frames(folder / "foreground", to_uint8(rgba), options=_PNG)
        write_frames(folder / "background", to_uint8(sample.background), options=_PNG)
        write_frames(folder / "composite", to_uint8(sample.composite), options=_PNG)
        write_json_atomic(folder / "prompts.json", sample.prompts)
        meta = {"source": sample.source, "fps": sample.fps, "synthetic": sample.attributes.to_dict()}
        write_json_atomic(folder / "meta.json", meta)
    return target


def _official_entry(sample: SyntheticSample, num_frames: int, extra: dict[str, str]) -> dict[str, Any]:
    prompts = sample.prompts
    return {
        "objects": {"1": {"frames": [f"{i:04d}" for i in range(num_frames)]}},
        "fg_prompt": prompts["foreground"],
        "bg_prompt": prompts["background"],
        "bl_prompt": prompts["composite"],
        "max_id": "1",
        **extra,
    }


class OfficialLayoutWriter:
    """Streams samples into the official LayerFlow layout under ``root``; ``finish`` writes the metas."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.davis = self.root / "DAVIS" / "480p"
        self.youtube = self.root / "YoutubeVOS"
        self._davis_meta: dict[str, Any] = {}
        self._youtube_meta: dict[str, Any] = {}

    def write(self, sample: SyntheticSample) -> None:
        num_frames = sample.composite.shape[0]
        grey_fg = sample.alpha * sample.foreground + 0.5 * (1 - sample.alpha)
        mask = to_uint8(sample.alpha)
        with atomic_directory(self.davis / sample.sample_id, overwrite=True) as folder:
            write_frames(folder / "fg", to_uint8(grey_fg), options=_PNG)
            write_frames(folder / "bg", to_uint8(sample.background), options=_PNG)
            write_frames(folder / "bl", to_uint8(sample.composite), options=_PNG)
            write_frames(folder / "mask", mask, options=_PNG)
        for kind, frames in (
            ("JPEGImages", to_uint8(sample.composite)),
            ("impainting", to_uint8(sample.background)),
            ("mask", np.repeat(mask, 3, axis=-1)),
        ):
            with atomic_directory(self.youtube / kind / sample.sample_id, overwrite=True) as folder:
                write_frames(folder, frames, suffix=".jpg", options=_JPEG)
        self._davis_meta[sample.sample_id] = _official_entry(sample, num_frames, {})
        self._youtube_meta[sample.sample_id] = _official_entry(sample, num_frames, {"is_seg": "False"})

    def finish(self) -> Path:
        for name in ("meta_fg2bg_test.json", "meta_seg_test.json"):
            write_json_atomic(self.davis / name, {"videos": self._davis_meta})
        write_json_atomic(self.youtube / "meta_test.json", {"videos": self._youtube_meta})
        return self.root


def generate_dataset(
    output_dir: str | Path,
    num_train: int,
    num_heldout: int,
    config: SyntheticConfig | None = None,
    seed: int = 0,
    layouts: Sequence[str] = LAYOUTS,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the train and held-out splits into ``output_dir`` and return its manifest.

    Writes ``<output_dir>/{train,heldout}/`` (simple layout), ``<output_dir>/official/{train,heldout}/``
    (official layout) for the requested ``layouts``, and ``dataset.json`` (config, seed, counts,
    sample ids). If ``dataset.json`` already records the same request the dataset is reused as is;
    a different request raises unless ``overwrite=True``.
    """
    unknown = [layout for layout in layouts if layout not in LAYOUTS]
    if unknown or not layouts:
        raise ValueError(f"layouts must be a non-empty subset of {LAYOUTS}, got {list(layouts)}")
    if num_train < 0 or num_heldout < 0:
        raise ValueError(f"sample counts must be >= 0, got train={num_train}, heldout={num_heldout}")
    config = config or SyntheticConfig()
    output_dir = Path(output_dir)
    counts = {"train": num_train, "heldout": num_heldout}
    request = {
        "generator": "layerflow.synthetic",
        "seed": seed,
        "counts": counts,
        "layouts": sorted(layouts),
        "config": config.to_dict(),
    }
    manifest_path = output_dir / DATASET_MANIFEST
    if manifest_path.exists():
        existing = json.loads(manifest_path.read_text())
        if {k: existing.get(k) for k in request} == request:
            return dict(existing)
        if not overwrite:
            differing = sorted(k for k in request if existing.get(k) != request[k])
            raise FileExistsError(
                f"{manifest_path} records a different dataset (differs in {differing}); "
                "pass overwrite=True or choose another output directory"
            )
    if overwrite:
        for folder in (*SPLITS, "official"):
            shutil.rmtree(output_dir / folder, ignore_errors=True)
    generator = SyntheticGenerator(config)
    ids: dict[str, list[str]] = {}
    for split in SPLITS:
        official = OfficialLayoutWriter(output_dir / "official" / split) if "official" in layouts else None
        ids[split] = []
        samples = generator.split(split, counts[split], seed)
        for sample in tqdm(samples, total=counts[split], desc=f"synthetic {split}", disable=not progress):
            if "simple" in layouts:
                write_simple_sample(sample, output_dir / split)
            if official is not None:
                official.write(sample)
            ids[split].append(sample.sample_id)
        if official is not None:
            official.finish()
    manifest = {**request, "splits": ids}
    write_json_atomic(manifest_path, manifest)
    return manifest
