"""Triton backends of the memory-bank kernels (run on a CUDA GPU, or on CPU tensors with TRITON_INTERPRET=1).

Importing this package imports ``triton``; check :func:`triton_available` before launching a kernel.
"""

from reidscale.kernels.triton.bank_loss import triton_loss_candidate_terms, triton_loss_full_terms
from reidscale.kernels.triton.bank_topk import TRITON_MAX_K, triton_available, triton_bank_topk
from reidscale.kernels.triton.bank_update import TRITON_MAX_UPDATE_D, triton_bank_update

__all__ = [
    "TRITON_MAX_K",
    "TRITON_MAX_UPDATE_D",
    "triton_available",
    "triton_bank_topk",
    "triton_bank_update",
    "triton_loss_candidate_terms",
    "triton_loss_full_terms",
]
