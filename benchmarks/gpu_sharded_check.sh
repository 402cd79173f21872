#!/usr/bin/env bash
# Issue 22's GPU check: the shipped accelerate configs (DDP, FSDP2 full-shard / shard-grad-op, DeepSpeed
# ZeRO-2 / ZeRO-3; DeepSpeed needs `pip install -e 'packages/layerflow[deepspeed]'`) train the
# tiny stage 1 on every visible GPU through `accelerate launch`, and a resume from checkpoint 2 equals
# the uninterrupted run (losses and trained weights, bit for bit); ZeRO-3's checkpoint resumes under DDP. About 2 minutes on one GPU after
# benchmarks/gpu_check.sh set up the environment. Results: $OUT/sharded.txt (default outputs/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT/sharded"
unset TRITON_INTERPRET
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
[ "$GPUS" -ge 1 ] || { echo "no CUDA device: nothing to check"; exit 1; }
CONFIGS=packages/layerflow/src/layerflow/training/configs/accelerate
status=0
for engine in ddp fsdp2-shard-grad-op fsdp2-full-shard deepspeed-zero2 deepspeed-zero3; do
  root="$OUT/sharded/$engine"
  rm -rf "$root"
  train() {
    timeout 300 accelerate launch --config_file "$CONFIGS/$engine.yaml" --num_processes "$GPUS" \
      -m layerflow.training --stage 1 --output-root "$1" --max-steps 4 --no-progress \
      --set run.checkpoint_every=2 --set run.mixed_precision=bf16 "${@:2}"
  }
  if train "$root/full" && cp -r "$root/full" "$root/resumed" \
      && rm -rf "$root/resumed/stage1/final" "$root/resumed/stage1/checkpoints/checkpoint-4" \
      && train "$root/resumed" --resume; then
    python3 - "$root" "$engine" "$GPUS" <<'PYEOF' | tee -a "$OUT/sharded.txt" || status=1
import json, sys, torch
from pathlib import Path
from safetensors.torch import load_file
root, engine, gpus = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
runs = [root / name / "stage1" / "final" for name in ("full", "resumed")]
losses = [json.loads((r / "training.json").read_text())["losses"] for r in runs]
weights = [load_file(str(r / "trained.safetensors")) for r in runs]
same = losses[0] == losses[1] and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
print(f"{engine} on {gpus} GPU(s): trains, resume from checkpoint 2 bit-exact: {same}, losses {losses[0]}")
sys.exit(0 if same else 1)
PYEOF
  else
    echo "$engine on $GPUS GPU(s): FAILED (see the log above)" | tee -a "$OUT/sharded.txt"; status=1
  fi
done
# One checkpoint format for every engine: ZeRO-3's checkpoint 2 resumed under DDP continues to the
# uninterrupted ZeRO-3 run (within float tolerance: another reduction order).
cross="$OUT/sharded/deepspeed-zero3-to-ddp"
rm -rf "$cross"
if cp -r "$OUT/sharded/deepspeed-zero3/full" "$cross" \
    && rm -rf "$cross/stage1/final" "$cross/stage1/checkpoints/checkpoint-4" \
    && timeout 300 accelerate launch --config_file "$CONFIGS/ddp.yaml" --num_processes "$GPUS" \
      -m layerflow.training --stage 1 --output-root "$cross" --max-steps 4 --no-progress \
      --set run.checkpoint_every=2 --set run.mixed_precision=bf16 --resume; then
  python3 - "$OUT/sharded/deepspeed-zero3/full" "$cross" <<'PYEOF' | tee -a "$OUT/sharded.txt" || status=1
import sys, torch
from pathlib import Path
from safetensors.torch import load_file
expected, resumed = (load_file(str(Path(r) / "stage1" / "final" / "trained.safetensors")) for r in sys.argv[1:])
close = all(torch.allclose(resumed[k], expected[k], rtol=1e-3, atol=1e-4) for k in expected)
print(f"deepspeed-zero3 checkpoint resumed under ddp: continues (within 1e-3): {close}")
sys.exit(0 if close else 1)
PYEOF
else
  echo "deepspeed-zero3 checkpoint resumed under ddp: FAILED (see the log above)" | tee -a "$OUT/sharded.txt"; status=1
fi
exit $status
