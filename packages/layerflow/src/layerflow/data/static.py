"""Static layered images turned into static videos (LayerFlow's high-quality image data).

```
ROOT/<sample_id>/
  foreground.png   RGBA (straight alpha), or RGB with alpha.png (grey)
  background.png   RGB (.png or .jpg)
  composite.png    optional; computed exactly when missing
  prompts.json     {"foreground": ..., "background": ..., "composite": ...}
```
Each image is repeated ``preprocess.frames.num_frames`` times, as the official ``copy_and_paste_rgba``
data is; the samples are ``"static"`` so the trainer switches the motion LoRA on for them.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from layerflow.media import IMAGE_SUFFIXES, find_file, read_image

from .base import LayeredDataset, build_sample, file_stats, sample_folders
from .checks import RawLayers
from .errors import OnError, SampleError
from .sample import LayeredSample, to_static
from .simple import DEFAULT_FPS, read_prompts
from .transforms import Preprocess


class StaticImageDataset(LayeredDataset[Path]):
    """Reads layered images (module docstring) and yields repeated-frame ``"static"`` samples.

    Args:
        fps: the frame rate recorded on the samples (the clip does not move, so it only labels them).
    """

    def __init__(
        self,
        root: str | Path,
        preprocess: Preprocess | None = None,
        *,
        fps: float = DEFAULT_FPS,
        on_error: OnError = "raise",
        seed: int = 0,
    ):
        super().__init__(preprocess, on_error=on_error, seed=seed)
        self.root = Path(root)
        self.fps = fps
        self._collect((folder.name, partial(self._checked, folder)) for folder in sample_folders(self.root))

    def _checked(self, folder: Path) -> Path:
        self._files(folder)
        return folder

    def _files(self, folder: Path) -> dict[str, Path]:
        files = {}
        for name in ("foreground", "background", "alpha", "composite"):
            path = find_file(folder, name, IMAGE_SUFFIXES)
            if path is not None:
                files[name] = path
        for required in ("foreground", "background"):
            if required not in files:
                raise SampleError(folder.name, f"{folder / required}.png (or .jpg) is missing")
        if not (folder / "prompts.json").is_file():
            raise SampleError(folder.name, f"{folder / 'prompts.json'} is missing")
        return files

    def _record_id(self, record: int) -> str:
        return self.records[record].name

    def _load(self, record: int, rng: np.random.Generator) -> LayeredSample:
        folder = self.records[record]
        files = self._files(folder)
        if "alpha" in files:
            foreground, alpha = read_image(files["foreground"], "rgb"), read_image(files["alpha"], "alpha")
        else:
            rgba = read_image(files["foreground"], "rgba")
            foreground, alpha = rgba[..., :3], rgba[..., 3:]
        composite = read_image(files["composite"], "rgb") if "composite" in files else None
        background = read_image(files["background"], "rgb")
        layers = RawLayers.single(
            foreground[None],
            alpha[None],
            background[None],
            composite[None] if composite is not None else None,
        )
        # Check and resize one frame, then repeat: identical to repeating first, num_frames times cheaper.
        image = build_sample(
            folder.name,
            layers,
            self.preprocess,
            prompts=read_prompts(folder / "prompts.json", folder.name),
            source="static",
            fps=self.fps,
        )
        return to_static(image, 0, self.preprocess.frames.num_frames)

    def _fingerprint_payload(self) -> dict[str, Any]:
        files = []
        for folder in self.records:
            paths = [*self._files(folder).values(), folder / "prompts.json"]
            files.append(file_stats(paths, self.root))
        return {"root": str(self.root.resolve()), "fps": self.fps, "files": files}
