"""Triton backends of the memory-bank kernels (run on a CUDA GPU, or on CPU tensors with TRITON_INTERPRET=1).

Importing this package imports ``triton``; check :func:`triton_available` before launching a kernel.
"""

from reidscale.kernels.triton.bank_topk import TRITON_MAX_K, triton_available, triton_bank_topk

__all__ = ["TRITON_MAX_K", "triton_available", "triton_bank_topk"]
