"""Memory-bank kernels: similarity + top-k negative selection, contrastive losses, momentum update.

The public ops pick their backend per call (CUDA extension → Triton → torch reference, override with
``REIDSCALE_KERNELS``) from what each backend declares it supports (``support``); their arguments are
checked once (``checks``, including the :class:`Exclusions` of ``bank_topk``); ``reference`` holds the
plain-torch definitions every backend is tested against, and ``chunked_topk`` the exact chunked top-k
that the torch paths rank with.
"""

from reidscale.kernels.checks import Exclusions
from reidscale.kernels.dispatch import (
    BACKEND_ENV,
    KernelFallbackWarning,
    bank_contrastive_loss,
    bank_topk,
    bank_update,
    choose_backend,
    dispatch_report,
    reset_backend_cache,
)
from reidscale.kernels.support import BACKEND_SUPPORT, KERNEL_BACKENDS, OP_BACKENDS

__all__ = [
    "BACKEND_ENV",
    "BACKEND_SUPPORT",
    "KERNEL_BACKENDS",
    "OP_BACKENDS",
    "Exclusions",
    "KernelFallbackWarning",
    "bank_contrastive_loss",
    "bank_topk",
    "bank_update",
    "choose_backend",
    "dispatch_report",
    "reset_backend_cache",
]
