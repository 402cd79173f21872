"""Cross-package rules: dependency direction, package shape, and version single-sourcing."""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))
SMALL = [p for p in PACKAGES if p.name != "layerflow"]
IMPORT_NAMES = {p.name.replace("-", "_") for p in PACKAGES}


def _project(package: Path) -> dict:
    return tomllib.loads((package / "pyproject.toml").read_text())["project"]


def _imported_top_levels(package: Path) -> set[str]:
    names: set[str] = set()
    for source in (package / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_packages_exist():
    assert "layer-embeddings" in {p.name for p in PACKAGES}


@pytest.mark.parametrize("package", SMALL, ids=lambda p: p.name)
def test_small_packages_never_import_siblings(package):
    own = package.name.replace("-", "_")
    forbidden = (IMPORT_NAMES - {own}) & _imported_top_levels(package)
    assert not forbidden, f"{package.name} imports sibling packages {sorted(forbidden)}"
    declared = {
        d.split(">")[0].split("=")[0].split("[")[0].strip() for d in _project(package).get("dependencies", [])
    }
    assert not declared & {p.name for p in PACKAGES}, f"{package.name} depends on a sibling package"


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_package_shape(package):
    name = package.name.replace("-", "_")
    assert (package / "README.md").is_file()
    assert (package / "src" / name / "py.typed").is_file()
    assert (package / "tests").is_dir()
    module = importlib.import_module(name)
    assert module.__version__ == _project(package)["version"]
    assert sorted(module.__all__) == sorted(set(module.__all__)), "__all__ has duplicates"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes {missing}"


def _is_testing_module(name: str) -> bool:
    return "testing" in name.split(".")


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_production_code_never_imports_testing_modules(package):
    """Only ``testing`` modules may import other ``testing`` modules (tiny builders live in ``tiny``)."""
    offenders = []
    for source in (package / "src").rglob("*.py"):
        if source.stem == "testing":
            continue
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                names = [base] + [f"{base}.{alias.name}" for alias in node.names] if node.level else [base]
            else:
                continue
            offenders += [f"{source.relative_to(ROOT)}: {n}" for n in names if _is_testing_module(n)]
    assert not offenders, "production modules import test helpers:\n" + "\n".join(offenders)
