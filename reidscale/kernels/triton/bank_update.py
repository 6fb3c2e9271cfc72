"""Triton ``bank_update``: momentum update + L2 renormalisation of bank rows by index, in place.

Semantics are those of :func:`reidscale.kernels.reference_loss.bank_update` (the definition):
``M[i] <- normalise(momentum · M[i] + (1 − momentum) · f)`` with ``normalise(x) = x / max(‖x‖₂, 1e-12)``,
repeated indices applied sequentially in batch order on an fp32 working row, and the bank dtype written
once per row.

Design. Torch groups the batch by row: a stable sort of ``indices`` gives, for every distinct row, its
occurrences in batch order (``order``) and where they start (``starts``, ``counts``). One program per
distinct row loads that row whole (``BLOCK_D`` = next power of two ≥ D, so D ≤ ``TRITON_UPDATE_MAX_D``,
declared in ``reidscale.kernels.support``) into fp32 registers, walks its occurrences in batch order, and
stores the result once in the bank's dtype (under the interpreter a bf16 bank is the exception: its
fp32 -> bf16 cast truncates, so there the fp32 rows come back and torch rounds and writes them). Distinct
programs write distinct rows, so there are no races. The kernel is compiled without FMA
contraction and uses round-to-nearest ``sqrt``/division, like the reference's separate torch ops; the
norm's summation order still differs from torch's, so normalised rows agree to about one ulp, while
``normalize=False`` rows are bitwise equal.
"""

# Triton kernels name their compile-time (tl.constexpr) parameters in capitals, by convention.
# ruff: noqa: N803

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from reidscale.kernels.support import TRITON_UPDATE_MAX_D, triton_interpreting
from reidscale.kernels.triton.runtime import require_runnable

__all__ = ["triton_bank_update"]

_NORMALIZE_EPS = 1e-12


@triton.jit
def _bank_update_kernel(
    m_ptr,
    f_ptr,
    out_ptr,
    rows_ptr,
    order_ptr,
    starts_ptr,
    counts_ptr,
    dim,
    sm0,
    sm1,
    sf0,
    sf1,
    keep_old,
    take_new,
    eps,
    NORMALIZE: tl.constexpr,
    STAGED: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Distinct row ``program_id(0)``: apply its occurrences in batch order, write the row once."""
    u = tl.program_id(0)
    row = tl.load(rows_ptr + u)
    start = tl.load(starts_ptr + u)
    count = tl.load(counts_ptr + u)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < dim
    row_ptrs = m_ptr + row * sm0 + offs_d * sm1
    current = tl.load(row_ptrs, mask=d_ok, other=0.0).to(tl.float32)
    for j in range(start, start + count):
        pair = tl.load(order_ptr + j)
        feature = tl.load(f_ptr + pair * sf0 + offs_d * sf1, mask=d_ok, other=0.0).to(tl.float32)
        current = keep_old * current + take_new * feature
        if NORMALIZE:
            norm = tl.sqrt_rn(tl.sum(current * current, axis=0))
            current = tl.div_rn(current, tl.maximum(norm, eps))
    if STAGED:
        tl.store(out_ptr + u * dim + offs_d, current, mask=d_ok)
    else:
        tl.store(row_ptrs, current.to(m_ptr.dtype.element_ty), mask=d_ok)


def triton_bank_update(
    bank: Tensor, indices: Tensor, features: Tensor, momentum: float, normalize: bool
) -> None:
    """In place ``bank[i] <- normalise(momentum · bank[i] + (1 − momentum) · f)`` per (index, feature) pair.

    Args:
        bank: [N, D] float32/float16/bfloat16, any strides, on CUDA (or CPU under TRITON_INTERPRET=1);
            modified in place.
        indices: [B] int64 in [0, N); repeats are applied sequentially in batch order.
        features: [B, D] float32/float16/bfloat16, any strides, same device.
        momentum: weight of the old row, in [0, 1].
        normalize: L2-normalise each updated row (``max(norm, 1e-12)`` in the denominator).

    Raises:
        RuntimeError: Triton cannot run here (no GPU and no TRITON_INTERPRET=1).
        ValueError: the bank is not on a CUDA device (without the interpreter), or D >
            ``TRITON_UPDATE_MAX_D``.
    """
    require_runnable("triton_bank_update", "bank", bank)
    if bank.shape[1] > TRITON_UPDATE_MAX_D:
        raise ValueError(
            f"bank must have D <= {TRITON_UPDATE_MAX_D} for the Triton kernel, got {bank.shape[1]}"
        )
    if indices.numel() == 0:
        return
    sorted_rows, order = torch.sort(indices, stable=True)  # occurrences of a row stay in batch order
    rows, counts = torch.unique_consecutive(sorted_rows, return_counts=True)
    starts = torch.cumsum(counts, dim=0) - counts
    momentum = float(momentum)
    # The interpreter rounds fp32 -> bf16 by truncation; there the fp32 rows come back and torch rounds them.
    staged = bank.dtype == torch.bfloat16 and triton_interpreting()
    out = torch.empty(
        (rows.numel(), bank.shape[1]) if staged else (1,), dtype=torch.float32, device=bank.device
    )
    _bank_update_kernel[(rows.numel(),)](
        bank, features, out, rows, order, starts, counts, bank.shape[1], *bank.stride(), *features.stride(),
        momentum, 1.0 - momentum, _NORMALIZE_EPS,
        NORMALIZE=bool(normalize), STAGED=staged, BLOCK_D=triton.next_power_of_2(bank.shape[1]),
        enable_fp_fusion=False,
    )  # fmt: skip
    if staged:
        bank[rows] = out.to(bank.dtype)
