"""The official LayerFlow data layout (``data_video.py: SFTDataset_layer_f3_stage2``).

A meta JSON ``{"videos": {vid: {"objects": {id: {"frames": ["0000", ...]}}, "max_id": "1",
"fg_prompt": ..., "bg_prompt": ..., "bl_prompt": ...}}}`` next to one of two folder styles:

```
DAVIS style (meta_fg2bg_test.json)        YoutubeVOS style (meta_test.json)
  <vid>/bl/0000.png    blended              JPEGImages/<vid>/0000.jpg   blended
  <vid>/bg/0000.png    background           impainting/<vid>/0000.jpg   background (inpainted)
  <vid>/mask/0000.png  foreground matte     mask/<vid>/0000.jpg|png     foreground matte
  <vid>/fg/0000.png    fg over grey (unread)
```

As in the official reader, the foreground is the blended frame with the mask as its alpha
(``fg = bl * mask``), the mask is resized to the frame size when it differs, frames come from
``objects[max_id]`` (sorted, at most 64) and ``"<vid>*<n>"`` keys repeat a video. The official stage-2
class reads ``bl`` for the DAVIS background too (those clips were only evaluated, generating the
background); this reader reads the ``bg/`` folder, which is what a training set in this layout holds.
Every sample is a real video: source ``"video"`` (motion gate 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from layerflow.json_files import read_json_object
from layerflow.media import FrameError, find_file

from .base import LayeredDataset, build_sample, file_stats, pick_frames
from .checks import RawLayers
from .errors import OnError, SampleError
from .frames import ImageSequence, read_every_frame
from .sample import LayeredSample
from .transforms import Preprocess

OfficialStyle = Literal["davis", "youtubevos"]
MAX_META_FRAMES = 64
OFFICIAL_FPS = 8.0
_PROMPT_KEYS = {"foreground": "fg_prompt", "background": "bg_prompt", "composite": "bl_prompt"}


@dataclass
class OfficialRecord:
    sample_id: str
    composite: list[Path]
    background: list[Path]
    mask: list[Path]
    prompts: dict[str, str]

    def paths(self) -> list[Path]:
        return self.composite + self.background + self.mask


def detect_style(root: Path) -> OfficialStyle:
    return "youtubevos" if (root / "JPEGImages").is_dir() else "davis"


def find_meta(root: Path) -> Path:
    candidates = sorted(root.glob("meta*.json"))
    if len(candidates) != 1:
        found = [p.name for p in candidates] or "none"
        raise FileNotFoundError(f"{root}: expected exactly one meta*.json, found {found}; pass meta_file=")
    return candidates[0]


def _frame_file(folder: Path, name: str, suffixes: tuple[str, ...]) -> Path:
    path = find_file(folder, name, suffixes)
    if path is not None:
        return path
    raise FrameError(
        f"{folder}: frame {name} is missing (looked for {', '.join(name + s for s in suffixes)})"
    )


def _resize_matte(alpha: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of ``[T, h, w, 1]`` to the frame size, as the official ``cv2.resize`` does."""
    tensor = torch.from_numpy(alpha).permute(0, 3, 1, 2)
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
    return resized.permute(0, 2, 3, 1).clamp(0.0, 1.0).numpy()


class OfficialLayoutDataset(LayeredDataset[OfficialRecord]):
    """Reads a DAVIS- or YoutubeVOS-style root of the official layout (module docstring).

    Args:
        root: the folder holding the meta JSON (``DAVIS/480p`` or ``YoutubeVOS``).
        meta_file: the meta JSON; by default the single ``meta*.json`` in ``root``.
        style: ``"davis"`` or ``"youtubevos"``; detected from the folders when ``None``.
        preprocess: use ``FrameSampler(official=True)`` for the official frame sampler.
    """

    def __init__(
        self,
        root: str | Path,
        preprocess: Preprocess | None = None,
        *,
        meta_file: str | Path | None = None,
        style: OfficialStyle | None = None,
        on_error: OnError = "raise",
        seed: int = 0,
    ):
        super().__init__(preprocess, on_error=on_error, seed=seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root {self.root} is not a directory")
        self.meta_file = Path(meta_file) if meta_file is not None else find_meta(self.root)
        if not self.meta_file.is_absolute() and not self.meta_file.exists():
            self.meta_file = self.root / self.meta_file
        self.style: OfficialStyle = style or detect_style(self.root)
        if self.style not in ("davis", "youtubevos"):
            raise ValueError(f"style must be 'davis' or 'youtubevos', got {self.style!r}")
        meta = read_json_object(self.meta_file)
        videos = meta.get("videos")
        if not isinstance(videos, dict):
            raise ValueError(f"{self.meta_file}: expected a top-level 'videos' object")
        self._collect((str(key), partial(self._record, str(key), entry)) for key, entry in videos.items())

    def _folders(self, vid: str) -> tuple[Path, Path, Path, tuple[str, ...]]:
        """Blended, background and mask folders of a video and the frame suffixes to try."""
        if self.style == "youtubevos":
            base = self.root
            return base / "JPEGImages" / vid, base / "impainting" / vid, base / "mask" / vid, (".jpg", ".png")
        base = self.root / vid
        return base / "bl", base / "bg", base / "mask", (".png", ".jpg")

    def _record(self, key: str, entry: Any) -> OfficialRecord:
        where = f"{self.meta_file.name} videos[{key!r}]"
        if not isinstance(entry, dict):
            raise SampleError(key, f"{where} must be an object")
        prompts = {}
        for role, meta_key in _PROMPT_KEYS.items():
            text = entry.get(meta_key)
            if not isinstance(text, str) or not text.strip():
                raise SampleError(key, f"{where}[{meta_key!r}] must be a non-empty string, got {text!r}")
            prompts[role] = text.strip()
        objects = entry.get("objects")
        max_id = str(entry.get("max_id", "1"))
        if not isinstance(objects, dict) or max_id not in objects:
            raise SampleError(key, f"{where}: objects has no entry for max_id {max_id!r}")
        frames = objects[max_id].get("frames") if isinstance(objects[max_id], dict) else None
        if not isinstance(frames, list) or not frames:
            raise SampleError(key, f"{where}['objects'][{max_id!r}]['frames'] must be a non-empty list")
        names = sorted(str(f) for f in frames)[:MAX_META_FRAMES]
        composite_dir, background_dir, mask_dir, suffixes = self._folders(key.split("*", maxsplit=1)[0])
        return OfficialRecord(
            sample_id=key,
            composite=[_frame_file(composite_dir, n, suffixes) for n in names],
            background=[_frame_file(background_dir, n, suffixes) for n in names],
            mask=[_frame_file(mask_dir, n, suffixes[::-1]) for n in names],
            prompts=prompts,
        )

    def _record_id(self, record: int) -> str:
        return self.records[record].sample_id

    def _check_stored(self, record: int) -> None:
        entry = self.records[record]
        read_every_frame("composite", ImageSequence(entry.composite, "rgb"))
        read_every_frame("background", ImageSequence(entry.background, "rgb"))
        read_every_frame("mask", ImageSequence(entry.mask, "alpha"))

    def _load(self, record: int, rng: np.random.Generator) -> LayeredSample:
        entry = self.records[record]
        indices = pick_frames(entry.sample_id, self.preprocess, len(entry.composite), OFFICIAL_FPS, rng)
        composite = ImageSequence(entry.composite, "rgb").read(indices)
        alpha = ImageSequence(entry.mask, "alpha").read(indices)
        if alpha.shape[1:3] != composite.shape[1:3]:
            alpha = _resize_matte(alpha, *composite.shape[1:3])
        background = ImageSequence(entry.background, "rgb").read(indices)
        layers = RawLayers.single(composite, alpha, background, composite)
        stride = self.preprocess.frames.effective_stride(OFFICIAL_FPS)
        return build_sample(
            entry.sample_id,
            layers,
            self.preprocess,
            prompts=entry.prompts,
            source="video",
            fps=OFFICIAL_FPS / stride,
        )

    def _fingerprint_payload(self) -> dict[str, Any]:
        files = [file_stats(r.paths(), self.root) for r in self.records]
        meta = file_stats([self.meta_file], self.meta_file.parent)
        return {"root": str(self.root.resolve()), "style": self.style, "meta": meta, "files": files}
