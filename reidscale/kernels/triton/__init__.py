"""Triton backends of the memory-bank kernels (run on a CUDA GPU, or on CPU tensors with TRITON_INTERPRET=1).

Importing this package imports ``triton``; check :func:`triton_available` before launching a kernel. The
kernels' limits are declared in ``reidscale.kernels.support``.
"""

from reidscale.kernels.triton.bank_loss import triton_loss_candidate_terms, triton_loss_full_terms
from reidscale.kernels.triton.bank_topk import triton_bank_topk
from reidscale.kernels.triton.bank_update import triton_bank_update
from reidscale.kernels.triton.runtime import triton_available

__all__ = [
    "triton_available",
    "triton_bank_topk",
    "triton_bank_update",
    "triton_loss_candidate_terms",
    "triton_loss_full_terms",
]
