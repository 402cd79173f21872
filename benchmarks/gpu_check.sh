#!/usr/bin/env bash
# The whole GPU check of issue 13 as one script, at most 8 minutes on one GPU, start-up included:
#   1. environment: reuse a CUDA build of torch if one imports, else install one per the README
#      (LAYERFLOW_TORCH_SPEC + the PyTorch CUDA index) and every package editable (<= 140 s);
#   2. the layer-attention CUDA test subset, `pytest -m gpu`, fixed kernel configs (<= 75 s);
#   3. the GPU report, benchmarks/gpu_report.py, with its own 230 s budget (<= 260 s).
# Results go to $OUT (default outputs/gpu_check): cuda_tests.txt, report.md, report.jsonl and
# crossovers.json (this device's measured points; copy them into
# packages/layer-attention/src/layer_attention/crossovers.json to let "auto" use them).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
unset TRITON_INTERPRET  # compiled kernels on the GPU
export LAYER_ATTENTION_AUTOTUNE=0 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
status=0
stamp() { echo "[gpu_check $(date -u +%H:%M:%S), ${SECONDS}s] $*"; }

cuda_torch() { "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }

stamp "1. environment"
if ! cuda_torch || ! "$PY" -c "import layerflow, layer_attention, triton" 2>/dev/null; then
  "$PY" -m venv .venv-gpu && . .venv-gpu/bin/activate && PY=python
  requirements=$("$PY" - <<'PYEOF'
import tomllib
from pathlib import Path
packages = sorted(p.parent for p in Path("packages").glob("*/pyproject.toml"))
for package in sorted(packages, key=lambda p: p.name == "layerflow"):  # siblings before layerflow
    extras = [e for e in tomllib.loads((package / "pyproject.toml").read_text())["project"].get("optional-dependencies", {}) if e != "xformers"]
    print("-e", f"{package}[{','.join(extras)}]" if extras else str(package))
PYEOF
)
  timeout 140 sh -c "pip install -q '${LAYERFLOW_TORCH_SPEC:-torch==2.13.0}' --index-url '${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}' \
    && pip install -q --extra-index-url '${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}' $(echo $requirements)" \
    || { stamp "install failed or timed out"; exit 1; }
fi
cuda_torch || { stamp "no CUDA device visible to torch; stopping"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null | tee "$OUT/device.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"

stamp "2. CUDA test subset"
timeout 75 "$PY" -m pytest packages/layer-attention/tests -m gpu -q -p no:cacheprovider --durations=5 \
  2>&1 | tee "$OUT/cuda_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { stamp "CUDA tests failed or timed out"; status=1; }

stamp "3. GPU report"
timeout 260 "$PY" benchmarks/gpu_report.py --budget 230 --json "$OUT/report.jsonl" \
  --write-crossovers "$OUT/crossovers.json" 2>&1 | tee "$OUT/report.md"
[ "${PIPESTATUS[0]}" -eq 0 ] || { stamp "report failed or timed out"; status=1; }

stamp "done (exit $status)"
exit $status
