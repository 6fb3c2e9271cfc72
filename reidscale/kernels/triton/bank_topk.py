"""Triton ``bank_topk``: fused bank similarity + running top-k; the B×N score matrix is never written.

Semantics are those of :func:`reidscale.kernels.reference_topk.bank_topk` for a single bank (the
definition): score = q·m (fp32) − the camera penalty where the cameras are equal, rows with the query's
label or index ``self_index[b]`` excluded (all carried by a checked
:class:`~reidscale.kernels.checks.Exclusions`), sorted by score descending then index ascending, padded
(−inf, −1).

Design. One program owns ``BLOCK_B`` queries and walks the bank in tiles of ``K_PAD`` rows
(``K_PAD`` = the next power of two ≥ k, at least 16). Per tile it computes the [BLOCK_B, K_PAD] scores
with ``tl.dot`` over ``BLOCK_D``-wide column slices (fp32 accumulation; fp16/bf16 operands go to the dot
natively, fp32 operands use ``input_precision="ieee"`` so no TF32 rounding), applies the camera penalty
and the exclusions, and packs each (score, index) into one int64 key whose integer order is score
descending then index ascending::

    key = (ordered_int32(score) << 32) | (2**32 − 1 − index),   excluded / out of range: −2**63

The running top-k ([BLOCK_B, K_PAD] keys, in registers) is merged with the tile by one ``tl.topk`` over
their concatenation, so ties across tiles are resolved exactly as in the reference. The result keys are
decoded in the kernel into (score, index) and written; −2**63 decodes to (−inf, −1).

Supported (``reidscale.kernels.support``): one bank tensor [N, D] (no weighted multi-bank list), no
``return_positive_scores``, ``k ≤ TRITON_TOPK_MAX_K`` (128; larger k is delegated to the torch reference,
see :func:`triton_bank_topk`), N ≤ ``FUSED_TOPK_MAX_ROWS``. Non-finite scores raise ``ValueError`` like
the reference.
"""

# Triton kernels name their compile-time (tl.constexpr) parameters in capitals, by convention.
# ruff: noqa: N803

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from reidscale.kernels.checks import Exclusions, check_exclusions, check_k, check_single_bank
from reidscale.kernels.reference_topk import torch_bank_topk
from reidscale.kernels.support import FUSED_TOPK_MAX_ROWS, TRITON_TOPK_MAX_K
from reidscale.kernels.triton.runtime import native_dot, require_runnable
from reidscale.kernels.triton.tiles import tile_dot

#: queries per program
BLOCK_B = 16
#: feature columns per tl.dot step
BLOCK_D = 32


@triton.jit
def _pack_keys(scores, cols, keep):
    """int64 keys ordered by (score desc, index asc); -2**63 where ``keep`` is False."""
    scores = tl.where(scores == 0.0, 0.0, scores)  # -0.0 == +0.0 in the reference's comparisons
    bits = scores.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    low = 4294967295 - cols.to(tl.int64)
    keys = (ordered.to(tl.int64) << 32) | low
    return tl.where(keep, keys, -9223372036854775807 - 1)


@triton.jit
def _decode_keys(keys):
    """(scores fp32, indices int64) of packed keys; the empty key gives (-inf, -1)."""
    hi = (keys >> 32).to(tl.int32)
    bits = tl.where(hi < 0, hi ^ 0x7FFFFFFF, hi)
    scores = bits.to(tl.float32, bitcast=True)
    index = 4294967295 - (keys & 4294967295)
    empty = keys == -9223372036854775807 - 1
    return tl.where(empty, float("-inf"), scores), tl.where(empty, -1, index)


@triton.jit
def _bank_topk_kernel(
    q_ptr,
    m_ptr,
    qlab_ptr,
    blab_ptr,
    self_ptr,
    qcam_ptr,
    bcam_ptr,
    out_s_ptr,
    out_i_ptr,
    bad_ptr,
    n_batch,
    n_rows,
    dim,
    k,
    sq0,
    sq1,
    sm0,
    sm1,
    penalty,
    HAS_LABELS: tl.constexpr,
    HAS_SELF: tl.constexpr,
    HAS_CAMS: tl.constexpr,
    NATIVE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    K_PAD: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < n_batch
    if HAS_LABELS:
        qlab = tl.load(qlab_ptr + rows, mask=row_ok, other=0)
    if HAS_SELF:
        qself = tl.load(self_ptr + rows, mask=row_ok, other=-1)
    if HAS_CAMS:
        qcam = tl.load(qcam_ptr + rows, mask=row_ok, other=0)
    best = tl.full((BLOCK_B, K_PAD), -9223372036854775807 - 1, tl.int64)
    bad = tl.zeros((BLOCK_B, K_PAD), tl.int32)
    for n0 in range(0, n_rows, K_PAD):
        cols = n0 + tl.arange(0, K_PAD)
        col_ok = cols < n_rows
        scores = tile_dot(q_ptr, m_ptr, rows, cols, n_batch, n_rows, dim, sq0, sq1, sm0, sm1, BLOCK_D, NATIVE)
        if HAS_CAMS:
            bcam = tl.load(bcam_ptr + cols, mask=col_ok, other=0)
            scores = tl.where(qcam[:, None] == bcam[None, :], scores - penalty, scores)
        keep = row_ok[:, None] & col_ok[None, :]
        finite = tl.abs(scores) <= 3.4028234663852886e38  # False for inf and NaN
        bad = bad | (keep & ~finite).to(tl.int32)
        if HAS_LABELS:
            blab = tl.load(blab_ptr + cols, mask=col_ok, other=0)
            keep = keep & (qlab[:, None] != blab[None, :])
        if HAS_SELF:
            keep = keep & (cols[None, :] != qself[:, None])
        keys = _pack_keys(scores, cols, keep)
        best = tl.topk(tl.reshape(tl.join(best, keys), (BLOCK_B, 2 * K_PAD)), K_PAD)
    out_scores, out_index = _decode_keys(best)
    slots = tl.arange(0, K_PAD)
    out_mask = row_ok[:, None] & (slots[None, :] < k)
    tl.store(out_s_ptr + rows[:, None] * k + slots[None, :], out_scores, mask=out_mask)
    tl.store(out_i_ptr + rows[:, None] * k + slots[None, :], out_index, mask=out_mask)
    tl.store(bad_ptr + pid, tl.max(tl.max(bad, axis=1), axis=0))


def triton_bank_topk(
    queries: Tensor, bank: Tensor, k: int, exclusions: Exclusions | None = None
) -> tuple[Tensor, Tensor]:
    """Top-k bank rows per query with the fused Triton kernel (single bank; see the module docstring).

    Args:
        queries: [B, D] float32/float16/bfloat16, on a CUDA device (or on the CPU under TRITON_INTERPRET=1).
        bank: [N, D] float32/float16/bfloat16 on the same device (one tensor; no weighted bank list).
        k: 1 ≤ k ≤ 4096; k ≤ TRITON_TOPK_MAX_K runs the kernel, larger k the torch reference.
        exclusions: labels, self index and camera penalty, built by ``Exclusions.check`` for this call
            (None: nothing excluded).

    Returns:
        (scores [B, k] float32, indices [B, k] int64): sorted by score descending then index ascending,
        padded with (−inf, −1); equal to the reference's result.

    Raises:
        ValueError: malformed arguments (as the reference), exclusions built for another call, a device
            Triton cannot run on, N > FUSED_TOPK_MAX_ROWS, or a non-finite score.
        RuntimeError: Triton cannot run here (no GPU and no TRITON_INTERPRET=1).
    """
    bank = check_single_bank("Triton", queries, bank)
    check_k(k)
    exclusions = check_exclusions(exclusions, queries, bank.shape[0])
    if k > TRITON_TOPK_MAX_K:
        return torch_bank_topk(queries, [(bank, 1.0)], k, exclusions)
    require_runnable("triton_bank_topk", "queries", queries)
    if bank.shape[0] > FUSED_TOPK_MAX_ROWS:
        raise ValueError(
            f"bank must have at most {FUSED_TOPK_MAX_ROWS} rows for the Triton kernel, got {bank.shape[0]}"
        )
    return _launch(queries, bank, k, exclusions)


def _launch(queries: Tensor, bank: Tensor, k: int, exclusions: Exclusions) -> tuple[Tensor, Tensor]:
    """Run the kernel: [B, k] float32 scores and int64 indices (inputs already checked)."""
    batch, dim = queries.shape
    device = queries.device
    scores = torch.full((batch, k), -math.inf, dtype=torch.float32, device=device)
    indices = torch.full((batch, k), -1, dtype=torch.int64, device=device)
    if batch == 0:
        return scores, indices
    programs = triton.cdiv(batch, BLOCK_B)
    bad = torch.zeros(programs, dtype=torch.int32, device=device)
    dummy = torch.zeros(1, dtype=torch.int64, device=device)
    labels, selves, cams = exclusions.labels, exclusions.self_index, exclusions.cams
    k_pad = max(16, triton.next_power_of_2(k))
    _bank_topk_kernel[(programs,)](
        queries,
        bank,
        labels[0] if labels else dummy,
        labels[1] if labels else dummy,
        selves if selves is not None else dummy,
        cams[0] if cams else dummy,
        cams[1] if cams else dummy,
        scores,
        indices,
        bad,
        batch,
        bank.shape[0],
        dim,
        k,
        *queries.stride(),
        *bank.stride(),
        exclusions.penalty,
        HAS_LABELS=labels is not None,
        HAS_SELF=selves is not None,
        HAS_CAMS=cams is not None,
        NATIVE=native_dot(queries, bank),
        BLOCK_B=BLOCK_B,
        BLOCK_D=BLOCK_D,
        K_PAD=k_pad,
    )
    if int(bad.max()) != 0:
        raise ValueError(
            "non-finite score: queries/bank must be finite and their products must fit in float32"
        )
    return scores, indices
