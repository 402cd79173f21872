"""Developer sessions for the LayerFlow monorepo.

Every package under ``packages/`` is discovered from its ``pyproject.toml``; no session keeps its own
list of packages. Torch is installed first and pinned: ``LAYERFLOW_TORCH_SPEC`` overrides the pin
(for example ``LAYERFLOW_TORCH_SPEC="torch==2.13.0+cu128"`` with a matching ``PIP_EXTRA_INDEX_URL``
on CUDA machines). Without the pin an unpinned ``torch`` pulls a multi-GB CUDA build.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES_DIR = ROOT / "packages"
TORCH_SPEC = os.environ.get("LAYERFLOW_TORCH_SPEC", "torch==2.13.0")
PYTHON = "3.11"

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"


def _packages() -> list[Path]:
    """Package folders, small packages first so that ``layerflow`` resolves against local siblings."""
    folders = sorted(p.parent for p in PACKAGES_DIR.glob("*/pyproject.toml"))
    return sorted(folders, key=lambda p: p.name == "layerflow")


def _optional_extras(package: Path) -> list[str]:
    """The extras a package declares (``test`` included), read from its own pyproject."""
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    return sorted(project.get("optional-dependencies", {}))


def _import_name(package: Path) -> str:
    return package.name.replace("-", "_")


def _install_workspace(session: nox.Session, *, extras: bool = True) -> None:
    """Torch (pinned) first, then every package editable with all of its extras."""
    session.install(TORCH_SPEC)
    requirements: list[str] = []
    for package in _packages():
        names = [e for e in _optional_extras(package) if e != "xformers"] if extras else []
        suffix = f"[{','.join(names)}]" if names else ""
        requirements += ["-e", f"{package}{suffix}"]
    session.install(*requirements)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """All package tests plus the cross-package tests in ``tests/`` (CPU; Triton in interpreter mode)."""
    _install_workspace(session)
    session.run(
        "pytest",
        *(session.posargs or [str(p / "tests") for p in _packages()] + ["tests"]),
        env={"TRITON_INTERPRET": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Every package benchmark, side by side, as one table (``-- --quick`` for a smoke run)."""
    _install_workspace(session)
    session.run("python", str(ROOT / "benchmarks" / "run_all.py"), *session.posargs)


@nox.session(python=PYTHON)
def bench_gpu(session: nox.Session) -> None:
    """The GPU report of issue 13 (``benchmarks/gpu_report.py``, at most ~5 minutes on one GPU).

    Needs a CUDA build of torch: set ``LAYERFLOW_TORCH_SPEC`` and ``PIP_INDEX_URL`` as the README
    shows. ``-- --dry-run`` checks the script on the CPU at tiny size.
    """
    _install_workspace(session)
    session.run("python", str(ROOT / "benchmarks" / "gpu_report.py"), *session.posargs)


@nox.session(python=PYTHON, reuse_venv=True)
def demo(session: nox.Session) -> None:
    """The embedded default, end to end on CPU: synthetic data, stages 1-3, all four tasks, metrics report.

    Outputs in ``outputs/demo/`` (``report.md``, ``report.json``, layered outputs per task);
    ``-- --quick`` checks the plumbing in about a minute.
    """
    _install_workspace(session)
    session.run("python", "-m", "layerflow.demo", *session.posargs)


def _train_stage(session: nox.Session, stage: int) -> None:
    """One stage of the three-stage recipe; outputs in ``outputs/train/stage<N>/``.

    With no arguments: the tiny built-in config on embedded synthetic data (CPU, minutes); missing
    earlier stages are run first. Real runs: ``nox -s train_stage1 -- --config FILE`` (any
    ``python -m layerflow.training`` option); there a missing earlier stage is an error.
    """
    _install_workspace(session)
    options = list(session.posargs)
    if not any(option.split("=")[0] == "--config" for option in options):
        options.append("--earlier-stages")  # tiny default: run missing earlier stages first
    session.run("python", "-m", "layerflow.training", "--stage", str(stage), *options)


@nox.session(python=PYTHON, reuse_venv=True)
def train_stage1(session: nox.Session) -> None:
    """Stage 1: the layer-aware model (chosen blocks + layer embedder) on multi-layer video."""
    _train_stage(session, 1)


@nox.session(python=PYTHON, reuse_venv=True)
def train_stage2(session: nox.Session) -> None:
    """Stage 2: the motion LoRA on static clips; starts from stage 1's output."""
    _train_stage(session, 2)


@nox.session(python=PYTHON, reuse_venv=True)
def train_stage3(session: nox.Session) -> None:
    """Stage 3: the content LoRA on static layered images + videos; starts from stage 2's output."""
    _train_stage(session, 3)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check with the single root configuration."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Mypy over every package's ``src`` tree."""
    _install_workspace(session)
    session.install("mypy>=1.10")
    for package in _packages():
        session.run("mypy", str(package / "src"), env={"MYPYPATH": str(package / "src")})


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Build wheel + sdist of every package, then install EACH wheel alone into a fresh venv and import it.

    This proves ``pip install transparent-vae`` works without the rest of the monorepo. ``layerflow``
    depends on its siblings, so it may resolve them from the freshly built wheels only.
    """
    session.install("build>=1.2")
    dist = ROOT / "dist"
    for package in _packages():
        session.run("python", "-m", "build", "--outdir", str(dist), str(package))
    for package in _packages():
        wheel_prefix = _import_name(package)
        wheels = sorted(dist.glob(f"{wheel_prefix}-*.whl"))
        if not wheels:
            session.error(f"no wheel was built for {package.name} in {dist}")
        venv = Path(session.create_tmp()) / f"only-{package.name}"
        session.run("python", "-m", "venv", "--clear", str(venv))
        python = str(venv / "bin" / "python")
        session.run(python, "-m", "pip", "install", "-q", TORCH_SPEC, external=True)
        session.run(
            python, "-m", "pip", "install", "-q", "--find-links", str(dist), str(wheels[-1]), external=True
        )
        session.run(
            python,
            "-c",
            f"import {wheel_prefix}; print({wheel_prefix}.__name__, {wheel_prefix}.__version__)",
            external=True,
        )


def _readme_examples(package: Path) -> list[str]:
    """The fenced ```python blocks of a package README, in order."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in (package / "README.md").read_text().splitlines():
        if current is None and line.strip() == "```python":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Run every ```python block of every package README (one script per README), so READMEs stay true."""
    _install_workspace(session)
    workdir = Path(session.create_tmp())
    for package in _packages():
        blocks = _readme_examples(package)
        if not blocks:
            continue
        script = workdir / f"readme_{_import_name(package)}.py"
        script.write_text("\n\n".join(blocks) + "\n")
        session.log(f"{package.name}: running {len(blocks)} README example block(s)")
        session.run("python", str(script), env={"TRITON_INTERPRET": "1"})
