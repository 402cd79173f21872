"""Jobs files: many videos from one command, split across the processes of a launch.

A jobs file holds one JSON object per line, one video each::

    {"output": "out/fox", "prompts": {"foreground": "a red fox", "background": "...", "composite": "..."},
     "seed": 3}
    {"output": "out/cat", "prompts": {...}, "inputs": {"foreground": "cat.webm"}, "alphas": {...}}
    {"output": "out/pup", "prompts": {...}, "images": {"foreground": "pup.png"}}

``output`` and the condition files (``inputs``/``alphas`` of fg2bg, bg2fg and decompose, ``images`` of
animate) are relative to the jobs file's folder; ``seed`` (default: the command's ``--seed``) is
optional. Under ``torchrun`` or ``accelerate
launch`` the launcher's ``RANK``/``WORLD_SIZE`` split the jobs (job ``i`` goes to process
``i % WORLD_SIZE``; videos are independent, so no process group is needed). Each video is written
atomically as a single command writes it, and a rerun skips the jobs whose output folder is already
a finished one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cli_checks import CliError
from .media import MANIFEST_NAME
from .output_policy import written_by_layerflow

#: The condition keys of a line, by the task command that takes them (a command not listed takes clips).
CONDITION_KEYS = {"generate": (), "animate": ("images",)}
CLIP_KEYS = ("inputs", "alphas")
KEYS = {"output", "prompts", "seed", *CLIP_KEYS, "images"}


@dataclass(frozen=True)
class Job:
    """One video of a jobs file (paths resolved against the file's folder)."""

    line: int
    output: Path
    prompts: dict[str, str]
    inputs: dict[str, str] = field(default_factory=dict)
    alphas: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    seed: int | None = None

    def is_finished(self) -> bool:
        """The output folder is a complete one this program wrote (atomic writes leave no partial one)."""
        return written_by_layerflow(self.output, MANIFEST_NAME)


@dataclass
class JobsReport:
    """What one process did with its share of a jobs file."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    def summary(self, rank: int, world_size: int) -> str:
        where = f"process {rank} of {world_size}: " if world_size > 1 else ""
        return f"{where}wrote {len(self.written)} video(s), skipped {len(self.skipped)} finished"


def _layer_map(value: Any, where: str, key: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise CliError(f"{where}: {key!r} must be an object of layer name -> text")
    return dict(value)


def parse_job(text: str, file: Path, line: int, *, command: str) -> Job:
    """Line ``line`` of jobs file ``file`` for task command ``command``; every error starts with ``FILE line N``."""
    where, folder = f"{file} line {line}", file.parent
    try:
        record = json.loads(text)
    except ValueError as error:
        raise CliError(f"{where}: not JSON ({error})") from None
    if not isinstance(record, dict):
        raise CliError(f"{where}: expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - KEYS)
    if unknown:
        raise CliError(f"{where}: unknown key(s) {unknown} (allowed: {sorted(KEYS)})")
    if not isinstance(record.get("output"), str) or not record["output"]:
        raise CliError(f"{where}: 'output' (the video's output folder) is required")
    prompts = _layer_map(record.get("prompts"), where, "prompts")
    if not prompts:
        raise CliError(f"{where}: 'prompts' needs one prompt per prompted layer")
    allowed = CONDITION_KEYS.get(command, CLIP_KEYS)
    stray = [key for key in ("images", *CLIP_KEYS) if key in record and key not in allowed]
    if stray:
        takes = f"it takes {'/'.join(allowed)}" if allowed else "it takes no condition files"
        raise CliError(f"{where}: {'/'.join(stray)} are not for {command} ({takes})")
    files = {key: _layer_map(record.get(key, {}), where, key) for key in ("images", *CLIP_KEYS)}
    resolved = {
        key: {name: str(folder / path) for name, path in value.items()} for key, value in files.items()
    }
    seed = record.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise CliError(f"{where}: 'seed' must be an integer, got {seed!r}")
    return Job(
        line=line,
        output=folder / record["output"],
        prompts=prompts,
        inputs=resolved["inputs"],
        alphas=resolved["alphas"],
        images=resolved["images"],
        seed=seed,
    )


def read_jobs(path: str | os.PathLike[str], *, command: str) -> list[Job]:
    """Every job of a jobs file, checked (one-line :class:`CliError` naming the line); outputs unique."""
    file = Path(path)
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"--jobs {path}: cannot read it ({error})") from None
    jobs = [
        parse_job(text, file, number, command=command) for number, text in enumerate(lines, 1) if text.strip()
    ]
    if not jobs:
        raise CliError(f"--jobs {path}: no jobs in it (one JSON object per line)")
    seen: dict[Path, int] = {}
    for job in jobs:
        folder = job.output.resolve()
        if folder in seen:
            raise CliError(f"{path} line {job.line}: output {job.output} is also line {seen[folder]}'s")
        seen[folder] = job.line
    return jobs


def launch_rank(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """This process's (rank, world size) from the launcher's environment (``(0, 1)`` without one)."""
    environ = os.environ if environ is None else environ
    return int(environ.get("RANK", "0") or 0), int(environ.get("WORLD_SIZE", "1") or 1)


def run_jobs(jobs: list[Job], run_one: Callable[[Job], Path], rank: int, world_size: int) -> JobsReport:
    """Run this process's share of ``jobs`` (every ``world_size``-th from ``rank``), skipping finished ones."""
    report = JobsReport()
    for job in jobs[rank::world_size]:
        if job.is_finished():
            report.skipped.append(job.output)
        else:
            report.written.append(run_one(job))
    return report
