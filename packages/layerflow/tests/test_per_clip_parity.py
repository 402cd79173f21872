"""``per_clip`` layouts give bit-identical outputs to the pipeline before the clip-codec redesign.

Oracle: the sources of the commit before the redesign, taken from this repository's git history
with ``git archive`` and run in a fresh interpreter on the same tiny seeded models; the current
pipeline must reproduce their layers and latents exactly for the project's own layouts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

#: The last commit before the one-vocabulary / official-variant redesign.
BASE_COMMIT = "a6eb32c"
HERE = Path(__file__).resolve().parent

CASES = [
    ("rgb", 1, ("generate", "foreground_to_background", "background_to_foreground", "decompose")),
    ("alpha_clip", 1, ("generate", "foreground_to_background", "background_to_foreground", "decompose")),
    ("latent_offset", 1, ("generate", "foreground_to_background", "decompose")),
    ("alpha_clip", 2, ("generate", "foreground_to_background")),
]

RUNNER = """
import sys, torch
torch.set_num_threads(1)
from layerflow.layout import LayerLayout
from layerflow.testing import build_tiny_pipeline, random_layer_frames

def run_all(cases):
    results = {}
    for alpha, foregrounds, tasks in cases:
        layout = LayerLayout.with_foregrounds(foregrounds, alpha=alpha)
        pipe = build_tiny_pipeline(layout)
        pipe.set_progress_bar_config(disable=True)
        frames = random_layer_frames(layout, seed=3)
        for task in tasks:
            task_layout = layout.for_task(task)
            prompts = {layer.name: "a red circle " + layer.name for layer in task_layout.prompt_layers}
            conditions = {layer.name: frames[layer.name] for layer in task_layout.condition_layers}
            out = pipe(prompts, task, conditions=conditions or None, num_frames=8, num_inference_steps=2,
                       guidance_scale=6.0, generator=torch.Generator().manual_seed(11))
            key = f"{alpha}-{foregrounds}-{task}"
            results[key] = {"latents": out.latents, **{f"layer/{k}": v for k, v in out.layers.items()}}
    return results

if __name__ == "__main__":
    import json
    torch.save(run_all(json.loads(sys.argv[1])), sys.argv[2])
"""


def _repo_root() -> Path | None:
    git = shutil.which("git")
    if git is None:
        return None
    found = subprocess.run([git, "rev-parse", "--show-toplevel"], cwd=HERE, capture_output=True, text=True)
    return Path(found.stdout.strip()) if found.returncode == 0 else None


@pytest.fixture(scope="module")
def before(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    root = _repo_root()
    if root is None:
        pytest.skip("not a git checkout: the pre-redesign sources are not available")
    present = subprocess.run(
        ["git", "cat-file", "-e", f"{BASE_COMMIT}^{{commit}}"], cwd=root, capture_output=True
    )
    if present.returncode != 0:
        pytest.skip(f"commit {BASE_COMMIT} is not in this clone's history (shallow clone?)")
    folder = tmp_path_factory.mktemp("base")
    archive = folder / "base.tar"
    subprocess.run(
        ["git", "archive", "--format=tar", "-o", str(archive), BASE_COMMIT, "packages"], cwd=root, check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    sources = os.pathsep.join(str(p) for p in sorted((folder / "packages").glob("*/src")))
    (folder / "runner.py").write_text(RUNNER)
    import json

    out = folder / "before.pt"
    env = {**os.environ, "PYTHONPATH": sources, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(folder / "runner.py"), json.dumps(CASES), str(out)],
        env=env,
        check=True,
        cwd=folder,
    )
    return torch.load(out, weights_only=True)


def test_per_clip_outputs_are_bit_identical_to_before_the_redesign(before):
    namespace: dict[str, object] = {"__name__": "parity"}
    exec(RUNNER, namespace)  # the same runner, on the current sources
    previous_threads = torch.get_num_threads()
    try:
        now = namespace["run_all"](CASES)  # type: ignore[operator]
    finally:
        torch.set_num_threads(previous_threads)
    assert sorted(now) == sorted(before)
    for key, tensors in before.items():
        assert sorted(now[key]) == sorted(tensors), key
        for name, value in tensors.items():
            assert torch.equal(now[key][name], value), f"{key}: {name} differs from the pre-redesign pipeline"
