"""The plain-torch definitions of reidscale's memory-bank ops: the oracle every fast backend is tested
against, and the CPU path.

- ``bank_topk``: top-k bank rows per query by (weighted) inner product, with label / self exclusion and a
  same-camera penalty, streamed over bank chunks (``reference_topk``; ``torch_bank_topk`` is the same on
  checked inputs).
- ``bank_contrastive_loss_candidates`` / ``bank_contrastive_loss_full``: multi-positive InfoNCE over a
  candidate set or over the whole bank, the latter with an online logsumexp (``reference_loss``).
- ``bank_update``: momentum update + L2 renormalisation of bank rows, repeats applied in batch order.
"""

from reidscale.kernels.reference_loss import (
    bank_contrastive_loss_candidates,
    bank_contrastive_loss_full,
    bank_update,
)
from reidscale.kernels.reference_topk import bank_topk, torch_bank_topk

__all__ = [
    "bank_contrastive_loss_candidates",
    "bank_contrastive_loss_full",
    "bank_topk",
    "bank_update",
    "torch_bank_topk",
]
