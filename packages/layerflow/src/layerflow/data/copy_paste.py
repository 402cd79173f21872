"""Copy-paste synthesis: matted foreground videos pasted onto background videos.

With ``num_foregrounds=N`` every sample pastes N foreground clips (layers ``foreground_0`` in front
... ``foreground_{N-1}`` at the back, as :meth:`LayerLayout.with_foregrounds` names them) and the
composite is the exact "over" of all of them. LayerFlow's recipe uses these clips twice: as moving videos (source ``"video"``, motion gate 0) mixed
into the content-LoRA stage, and frozen to one repeated frame (``static=True``, source ``"static"``,
motion gate 1) as the motion-LoRA stage's static videos. Inputs, one folder per clip:

```
FOREGROUNDS/<id>/foreground/0000.png ...   RGBA, or RGB + alpha/ (or foreground.webm with alpha)
FOREGROUNDS/<id>/prompts.json              {"foreground": "..."}
BACKGROUNDS/<id>/background/0000.png ...   RGB (or background.mp4)
BACKGROUNDS/<id>/prompts.json              {"background": "..."}
```
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerflow.media import frames_to_tensor

from .base import LayeredDataset, file_stats, pick_frames, sample_folders
from .checks import check_matte, check_values
from .errors import OnError, SampleError
from .frames import FrameSequence
from .sample import Layer, LayeredSample, composite_layers, foreground_names, to_static
from .simple import DEFAULT_FPS, open_foreground, open_required, read_prompts
from .transforms import Preprocess, resize_foreground, resize_opaque

DEFAULT_COMPOSITE_PROMPT = "{foreground}, in front of {background}"
#: How the foreground prompts of a several-foreground sample join in ``{foreground}``, front first.
FOREGROUND_JOIN = " and "


def _clip_folders(root: Path) -> list[Path]:
    folders = sample_folders(root)
    if not folders:
        raise ValueError(f"copy-paste source {root} has no clip folders")
    return folders


def _sequence_fps(sequence: FrameSequence) -> float:
    fps = getattr(sequence, "fps", None)
    return float(fps) if fps else DEFAULT_FPS


class CopyPasteDataset(LayeredDataset[int]):
    """Layered clips made by pasting foreground clips onto background clips.

    Sample ``i`` of an epoch pastes foreground ``i % len(foregrounds)`` (frontmost) and, with
    ``num_foregrounds > 1``, further random foreground clips behind it onto a random background; each
    object's box is scaled to a random fraction of the frame and placed at a random position where it
    fits entirely; the composite is computed exactly. Everything is drawn from ``(seed, epoch, i)``.

    Args:
        foregrounds, backgrounds: folders of clip folders (module docstring).
        num_samples: samples per epoch; defaults to the number of foreground clips.
        num_foregrounds: foreground layers per sample, composited front to back.
        scale_range: range of the fraction of the frame the object's bounding box may fill.
        static: freeze each sample to one random frame repeated (source ``"static"``).
        composite_prompt: ``str.format`` template for the blended prompt, with ``{foreground}`` (the
            foreground prompts joined front first with :data:`FOREGROUND_JOIN`) and ``{background}``.
    """

    def __init__(
        self,
        foregrounds: str | Path,
        backgrounds: str | Path,
        preprocess: Preprocess | None = None,
        *,
        num_samples: int | None = None,
        num_foregrounds: int = 1,
        scale_range: tuple[float, float] = (0.4, 0.9),
        static: bool = False,
        composite_prompt: str = DEFAULT_COMPOSITE_PROMPT,
        on_error: OnError = "raise",
        seed: int = 0,
    ):
        super().__init__(preprocess, on_error=on_error, seed=seed)
        low, high = scale_range
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"scale_range must satisfy 0 < low <= high <= 1, got {scale_range}")
        self.foregrounds_root, self.backgrounds_root = Path(foregrounds), Path(backgrounds)
        self.foregrounds = _clip_folders(self.foregrounds_root)
        self.backgrounds = _clip_folders(self.backgrounds_root)
        self.num_samples = len(self.foregrounds) if num_samples is None else num_samples
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if num_foregrounds < 1:
            raise ValueError(f"num_foregrounds must be >= 1, got {num_foregrounds}")
        self.num_foregrounds = num_foregrounds
        self.scale_range = (float(low), float(high))
        self.static = static
        self.composite_prompt = composite_prompt
        self._collect((self._record_id(i), partial(int, i)) for i in range(self.num_samples))

    def _record_id(self, record: int) -> str:
        return f"copy_paste_{record:06d}"

    def _load(self, record: int, rng: np.random.Generator) -> LayeredSample:
        count = len(self.foregrounds)
        picks = [record % count] + [int(i) for i in rng.integers(count, size=self.num_foregrounds - 1)]
        fg_folders = [self.foregrounds[i] for i in picks]
        bg_folder = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        sample_id = f"{self._record_id(record)}:{'+'.join(f.name for f in fg_folders)}@{bg_folder.name}"
        h, w, mode = self.preprocess.height, self.preprocess.width, self.preprocess.resample

        # 1. Background clip, resized to the output frame.
        background_files = open_required(bg_folder, "background", "rgb", sample_id)
        bg_fps = _sequence_fps(background_files)
        bg_indices = pick_frames(sample_id, self.preprocess, len(background_files), bg_fps, rng)
        background_frames = background_files.read(bg_indices)
        check_values(sample_id, f"background {bg_folder.name}", background_frames)
        background = resize_opaque(frames_to_tensor(background_frames), h, w, mode)

        # 2. Foreground clips, front to back, each pasted at a random scale and position.
        foregrounds = [self._paste(folder, sample_id, background.shape[0], rng) for folder in fg_folders]

        # 3. Exact composite and prompts.
        names = foreground_names(self.num_foregrounds)
        fg_prompts = [
            read_prompts(folder / "prompts.json", sample_id, ("foreground",))["foreground"]
            for folder in fg_folders
        ]
        bg_prompt = read_prompts(bg_folder / "prompts.json", sample_id, ("background",))["background"]
        composite = self.composite_prompt.format(
            foreground=FOREGROUND_JOIN.join(fg_prompts), background=bg_prompt
        )
        sample = LayeredSample(
            sample_id=sample_id,
            layers={
                **dict(zip(names, foregrounds, strict=True)),
                "background": Layer("background", background),
                "composite": Layer("composite", composite_layers(foregrounds, background)),
            },
            prompts={
                **dict(zip(names, fg_prompts, strict=True)),
                "background": bg_prompt,
                "composite": composite,
            },
            source="video",
            fps=bg_fps / self.preprocess.frames.effective_stride(bg_fps),
        )
        return to_static(sample, int(rng.integers(background.shape[0]))) if self.static else sample

    def _paste(self, folder: Path, sample_id: str, num_frames: int, rng: np.random.Generator) -> Layer:
        """One foreground clip cropped to the object's box over all frames, scaled and placed at random."""
        h, w, mode = self.preprocess.height, self.preprocess.width, self.preprocess.resample
        color_files, alpha_files = open_foreground(folder, sample_id)
        lengths = {len(color_files)} | ({len(alpha_files)} if alpha_files is not None else set())
        if len(lengths) > 1:
            raise SampleError(
                sample_id, f"foreground {folder.name}: colour and alpha differ in length {lengths}"
            )
        indices = pick_frames(sample_id, self.preprocess, len(color_files), _sequence_fps(color_files), rng)
        color = color_files.read(indices)
        if alpha_files is None:
            color, alpha = color[..., :3], color[..., 3:]
        else:
            alpha = alpha_files.read(indices)
        for name, array in (("foreground", color), ("alpha", alpha)):
            check_values(sample_id, f"{name} {folder.name}", array)
        check_matte(sample_id, alpha)
        rows = np.flatnonzero(alpha.max(axis=(0, 2, 3)) > 0)
        cols = np.flatnonzero(alpha.max(axis=(0, 1, 3)) > 0)
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        color_box = frames_to_tensor(color[:, box[0], box[1]])
        alpha_box = frames_to_tensor(alpha[:, box[0], box[1]])

        scale = rng.uniform(*self.scale_range)
        box_h, box_w = color_box.shape[-2:]
        factor = min(scale * h / box_h, scale * w / box_w)
        size_h, size_w = max(1, min(h, round(box_h * factor))), max(1, min(w, round(box_w * factor)))
        top, left = int(rng.integers(0, h - size_h + 1)), int(rng.integers(0, w - size_w + 1))
        pasted_color, pasted_alpha = resize_foreground(color_box, alpha_box, size_h, size_w, mode, crop=False)
        rgb = torch.zeros(num_frames, 3, h, w)
        matte = torch.zeros(num_frames, 1, h, w)
        rgb[..., top : top + size_h, left : left + size_w] = pasted_color
        matte[..., top : top + size_h, left : left + size_w] = pasted_alpha
        return Layer("foreground", rgb, matte)

    def _fingerprint_payload(self) -> dict[str, Any]:
        def stats(root: Path, folders: list[Path]) -> list[list[tuple[str, int, int]]]:
            return [file_stats(sorted(p for p in f.rglob("*") if p.is_file()), root) for f in folders]

        return {
            "foregrounds": str(self.foregrounds_root.resolve()),
            "backgrounds": str(self.backgrounds_root.resolve()),
            "num_samples": self.num_samples,
            "num_foregrounds": self.num_foregrounds,
            "scale_range": self.scale_range,
            "static": self.static,
            "composite_prompt": self.composite_prompt,
            "files": [
                stats(self.foregrounds_root, self.foregrounds),
                stats(self.backgrounds_root, self.backgrounds),
            ],
        }
