"""Triton kernels (`triton_kernels`), their host launchers (`triton_launch`) and autograd Function (`triton_autograd`)."""
