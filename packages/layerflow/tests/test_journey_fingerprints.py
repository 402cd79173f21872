"""The CLI's output folders are byte-identical to the ones written before the task-runner redesign.

Oracle: the sources of :data:`BASE_COMMIT` (the commit before the redesign), taken from this
repository's history with ``git archive`` and run as ``python -m layerflow`` in a fresh interpreter,
against the current sources running the same commands on the same model folder and input clips.
Every file of every output folder is fingerprinted (sha256 of its bytes).

What may legitimately vary between two runs is kept out of the folders instead of filtered out of
the comparison: each side runs in its own working directory with *relative* paths, so the paths a
manifest records (``settings.model``, ``edit.source``, a kept layer's ``source``, the evaluated
folder) read the same on both sides. Nothing the CLI writes holds a timestamp; file modes and mtimes
are not compared (only names and bytes). The one legitimately variable content is the Matroska
container of ``.webm`` files: the muxer draws random segment and track UIDs per file, so a WebM is
fingerprinted by its encoded stream (every packet's bytes and timestamps) instead of its file bytes.

One difference is intended: evaluations gained the cross-layer metric (``consistency.cross_layer``)
after the redesign, so an evaluation's JSON and Markdown are compared without its lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import av
import pytest

from layerflow.layout import LayerLayout
from layerflow.media import write_png_sequence
from layerflow.testing import build_tiny_pipeline, random_layer_frames, single_thread

#: The last commit before the task runner, the output-folder policy and the module split.
BASE_COMMIT = "f1c1289"
HERE = Path(__file__).resolve().parent
PROMPTS = ["-p", "foreground=a red circle", "-p", "background=blue stripes", "-p", "composite=a red circle"]
SIZE = ["--frames", "8", "--height", "16", "--width", "16"]
SAMPLING = ["--steps", "2", "--device", "cpu"]

#: The journeys, in order (later ones read earlier folders); ``../model`` and ``../clips`` are shared.
JOURNEYS: list[list[str]] = [
    ["generate", "../model", "-o", "generate", *PROMPTS, *SIZE, *SAMPLING, "--seed", "5"],
    [
        "decompose",
        "../model",
        "-i",
        "composite=../clips/composite",
        "-o",
        "decompose",
        *PROMPTS[:4],
        *SAMPLING,
        "--seed",
        "6",
        "--no-video",
    ],
    [
        "edit",
        "../model",
        "decompose",
        "--regenerate",
        "background",
        "-p",
        "background=green grass",
        "-p",
        "composite=a red circle on grass",
        "-o",
        "edit",
        *SAMPLING,
        "--seed",
        "7",
        "--formats",
        "png,webm",
    ],
    [
        "edit",
        "../model",
        "../clips/background",
        "--regenerate",
        "foreground",
        "-o",
        "edit_from_clip",
        *PROMPTS,
        *SAMPLING,
        "--seed",
        "8",
        "--no-video",
        "--premultiplied",
    ],
    [
        "recompose",
        "edit",
        "-o",
        "recompose",
        "--replace",
        "background=../clips/background",
        "--replace",
        "foreground=../clips/foreground",
        "--scale",
        "foreground=0.5",
        "--offset",
        "foreground=3,2",
        "--formats",
        "png,prores",
    ],
    ["eval", "generate", "--report-dir", "eval_generate"],
    ["eval", "edit", "--report-dir", "eval_edit"],
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


#: Metrics added to every evaluation after :data:`BASE_COMMIT` (see the module docstring).
ADDED_METRICS = "consistency."


def _without_added_metrics(path: Path) -> bytes:
    """An evaluation file with the metrics added since :data:`BASE_COMMIT` taken out."""
    if path.suffix == ".json":

        def strip(tree: object) -> object:
            if isinstance(tree, dict):
                return {k: strip(v) for k, v in tree.items() if not str(k).startswith(ADDED_METRICS)}
            return [strip(v) for v in tree] if isinstance(tree, list) else tree

        return json.dumps(strip(json.loads(path.read_text())), sort_keys=True).encode()
    return "".join(line for line in path.read_text().splitlines(True) if ADDED_METRICS not in line).encode()


def digest(path: Path) -> str:
    """sha256 of a file's bytes; of a WebM's packets (bytes, pts, dts), whose container UIDs are random."""
    if path.parent.name.startswith("eval_") and path.suffix in (".json", ".md"):
        return hashlib.sha256(_without_added_metrics(path)).hexdigest()
    if path.suffix != ".webm":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    sha = hashlib.sha256()
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            sha.update(f"{packet.pts},{packet.dts},{packet.is_keyframe}".encode())
            sha.update(bytes(packet))
    return sha.hexdigest()


def fingerprint(folder: Path) -> dict[str, str]:
    """``relative path -> digest`` of every file under ``folder``."""
    return {
        path.relative_to(folder).as_posix(): digest(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run_journeys(side: Path, pythonpath: str | None) -> dict[str, dict[str, str]]:
    """Run every journey with ``cwd=side``; the fingerprints of the folders they wrote."""
    side.mkdir()
    env = dict(ENV)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    for argv in JOURNEYS:
        done = subprocess.run(
            [sys.executable, "-m", "layerflow", *argv], cwd=side, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return {folder.name: fingerprint(folder) for folder in sorted(side.iterdir())}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model folder and input clips both sides read (``../model``, ``../clips``)."""
    root = tmp_path_factory.mktemp("journeys")
    with single_thread():
        build_tiny_pipeline().save_pretrained(root / "model")
    for name, frames in random_layer_frames(LayerLayout.official(), seed=4).items():
        write_png_sequence(root / "clips" / name, frames)
    return root


@pytest.fixture(scope="module")
def before(shared: Path) -> dict[str, dict[str, str]]:
    found = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=HERE, capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip("not a git checkout: the pre-redesign sources are not available")
    root = Path(found.stdout.strip())
    present = subprocess.run(["git", "cat-file", "-e", f"{BASE_COMMIT}^{{commit}}"], cwd=root)
    if present.returncode != 0:
        pytest.skip(f"commit {BASE_COMMIT} is not in this clone's history (shallow clone?)")
    archive = shared / "base.tar"
    subprocess.run(
        ["git", "archive", "--format=tar", "-o", str(archive), BASE_COMMIT, "packages"], cwd=root, check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(shared / "base", filter="data")
    sources = os.pathsep.join(str(p) for p in sorted((shared / "base" / "packages").glob("*/src")))
    return run_journeys(shared / "before", sources)


def test_cli_output_folders_are_byte_identical_to_before(shared: Path, before: dict) -> None:
    now = run_journeys(shared / "now", None)
    assert sorted(now) == sorted(before)
    for folder, files in before.items():
        assert sorted(now[folder]) == sorted(files), f"{folder}: different files"
        changed = sorted(name for name, digest in files.items() if now[folder][name] != digest)
        assert not changed, f"{folder}: {changed} differ from the files written before the redesign"
