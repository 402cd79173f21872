"""Any public module imports first in a fresh interpreter: importing diffusers registers LayerFlow's
pipeline (``layerflow.registration``), which must not re-enter a module that is still loading."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["layerflow.codec", "layerflow.data"])
def test_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    code = f"import {module}, diffusers; assert diffusers.LayerFlowPipeline.__name__ == 'LayerFlowPipeline'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
