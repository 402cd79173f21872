"""Repository-wide pytest setup, loaded before any test module is imported.

Triton kernels pick interpreter or compiled mode when they are decorated, so ``TRITON_INTERPRET``
must be set before any kernel module is imported. Without a CUDA device the interpreter is the
only way to run them; an explicit setting in the environment always wins.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests never autotune the Triton kernels: one fixed config per head dim compiles once per shape
# class instead of benchmarking every config for every new N (the CUDA subset stays under a minute).
os.environ.setdefault("LAYER_ATTENTION_AUTOTUNE", "0")
