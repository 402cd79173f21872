"""Package-local pytest setup: lets ``pytest packages/layer-attention/tests`` run on its own.

Triton picks interpreter or compiled mode when a kernel is decorated, so ``TRITON_INTERPRET`` is set
here, before any test module imports the kernels (same rule as the repository's root conftest).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests never autotune the Triton kernels: one fixed config per head dim compiles once per shape
# class instead of benchmarking every config for every new N (the CUDA subset stays under a minute).
os.environ.setdefault("LAYER_ATTENTION_AUTOTUNE", "0")
