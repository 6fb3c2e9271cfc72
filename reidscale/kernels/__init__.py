"""Memory-bank kernels: similarity + top-k negative selection, contrastive losses, momentum update.

The public ops pick their backend per call (CUDA extension → Triton → torch reference, override with
``REIDSCALE_KERNELS``); ``reference`` holds the plain-torch definitions every backend is tested against.
"""

from reidscale.kernels.dispatch import (
    BACKEND_ENV,
    BACKENDS,
    OP_BACKENDS,
    KernelFallbackWarning,
    bank_contrastive_loss,
    bank_topk,
    bank_update,
    choose_backend,
    dispatch_report,
    reset_backend_cache,
)

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "OP_BACKENDS",
    "KernelFallbackWarning",
    "bank_contrastive_loss",
    "bank_topk",
    "bank_update",
    "choose_backend",
    "dispatch_report",
    "reset_backend_cache",
]
