"""Package-local pytest setup: lets ``pytest packages/layer-attention/tests`` run on its own.

Triton picks interpreter or compiled mode when a kernel is decorated, so ``TRITON_INTERPRET`` is set
here, before any test module imports the kernels (same rule as the repository's root conftest).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
