"""Triton terms of the memory-bank contrastive losses: per-query loss and dL_b/dq_b in one pass, no B×N.

Semantics are those of :mod:`reidscale.kernels.reference_loss` (the definition), per query ``b`` with
logits ``s_bn = q_b · m_n / temperature`` (fp32) and ``W_b = Σ_j w_bj``:

- whole bank (:func:`triton_loss_full_terms`): ``lse_b`` over all N rows,
  ``per_query[b] = W_b · lse_b − Σ_p w_bp s_b,pos_p`` and
  ``grad[b] = (W_b · Σ_n softmax(s_b)_n m_n − Σ_p w_bp m_pos_p) / temperature``;
- candidate set (:func:`triton_loss_candidate_terms`): the same with the softmax over the valid (non −1)
  candidates of row ``b`` only, a repeated index counting as that many columns.

``per_query.mean()`` is the reference loss and ``grad / B`` its gradient with respect to the queries.

Design (whole bank). A flash-attention-style forward with K = V = bank rows. Program ``(i, j)`` owns
``BLOCK_B`` queries and the ``j``-th contiguous slice of the bank (a multiple of ``BLOCK_N`` rows). Per bank
tile it forms the [BLOCK_B, BLOCK_N] logits with ``tl.dot`` over ``BLOCK_D``-wide column slices (fp16/bf16
operands go to the dot natively: exact products, fp32 accumulation; fp32 operands use
``input_precision="ieee"``), updates the running max and running sum of the online softmax, and adds
``exp(s − max) @ tile`` to the accumulator, rescaled by ``exp(old max − new max)`` when the max moves. D
may be up to 4096, so the [BLOCK_B, D] accumulator lives in a program-owned fp32 buffer in global memory
(L2-resident), read-modified-written one ``BLOCK_D`` slice at a time for each bank tile; no two programs
touch the same buffer rows, so there are no races. The logits are never recomputed: each tile's
probabilities feed the accumulator straight after they are formed (the bank slice is re-read for that
product, from cache). The partial ``(max, sum, acc)`` of the ``S`` bank slices are merged in torch
(``O(S · B · D)``); ``S > 1`` only when there are too few query blocks to fill the device.

Design (gathered rows: candidates, and the positives of the whole-bank form). One program per query walks
its index row in tiles of ``BLOCK_C``, loads the indexed bank rows directly (no [B, C, D] gather in
torch), forms the logits as fp32 row dot products, keeps an online softmax over the valid slots, and
accumulates ``Σ exp(s − max) m`` and ``Σ w m`` in program-owned fp32 [D] rows of global memory.

Inputs are checked by the caller (the dispatcher runs ``reidscale.kernels.checks``); here only that Triton
can run. Accumulation is fp32 throughout; the probability-weighted row sums use an fp32 ``ieee`` dot (no
TF32), so the result has fp32 accuracy for every input dtype.
"""

# Triton kernels name their compile-time (tl.constexpr) parameters in capitals, by convention.
# ruff: noqa: N803

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from reidscale.kernels.checks import check_optional_positive_int
from reidscale.kernels.triton.runtime import native_dot, require_runnable
from reidscale.kernels.triton.tiles import tile_dot

__all__ = ["triton_loss_candidate_terms", "triton_loss_full_terms"]

#: queries per program of the whole-bank kernel
BLOCK_B = 16
#: bank rows per tile of the whole-bank kernel
BLOCK_N = 32
#: feature columns per step (both kernels)
BLOCK_D = 32
#: index slots per tile of the gathered-rows kernel
BLOCK_C = 16


# ------------------------------------------------------------------------------------- whole-bank kernel
@triton.jit
def _accumulate_tile(acc_ptr, m_ptr, probs, alpha, rows, row_ok, cols, n_rows, dim, sm0, sm1, BLOCK_D):
    """acc[rows] <- alpha · acc[rows] + probs @ bank[cols], one BLOCK_D column slice at a time."""
    rows64, cols64 = rows.to(tl.int64), cols.to(tl.int64)
    for d0 in range(0, dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        m = tl.load(
            m_ptr + cols64[:, None] * sm0 + offs_d[None, :] * sm1,
            mask=(cols[:, None] < n_rows) & (offs_d[None, :] < dim),
            other=0.0,
        ).to(tl.float32)
        ptrs = acc_ptr + rows64[:, None] * dim + offs_d[None, :]
        keep = row_ok[:, None] & (offs_d[None, :] < dim)
        acc = tl.load(ptrs, mask=keep, other=0.0) * alpha[:, None]
        acc = tl.dot(probs, m, acc, input_precision="ieee")
        tl.store(ptrs, acc, mask=keep)


@triton.jit
def _full_bank_kernel(
    q_ptr,
    m_ptr,
    max_ptr,
    sum_ptr,
    acc_ptr,
    n_batch,
    n_rows,
    dim,
    split_rows,
    sq0,
    sq1,
    sm0,
    sm1,
    temperature,
    NEED_GRAD: tl.constexpr,
    NATIVE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Online softmax of query block ``program_id(0)`` over bank slice ``program_id(1)``."""
    pid_s = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < n_batch
    start = pid_s * split_rows
    stop = tl.minimum(start + split_rows, n_rows)
    acc_base = acc_ptr + pid_s.to(tl.int64) * n_batch * dim
    run_max = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_B,), tl.float32)
    for n0 in range(start, stop, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        logits = tile_dot(q_ptr, m_ptr, rows, cols, n_batch, n_rows, dim, sq0, sq1, sm0, sm1, BLOCK_D, NATIVE)
        logits = tl.where(cols[None, :] < stop, logits / temperature, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        alpha = tl.exp(run_max - new_max)
        probs = tl.exp(logits - new_max[:, None])
        run_sum = run_sum * alpha + tl.sum(probs, axis=1)
        run_max = new_max
        if NEED_GRAD:
            _accumulate_tile(
                acc_base, m_ptr, probs, alpha, rows, row_ok, cols, n_rows, dim, sm0, sm1, BLOCK_D
            )
    tl.store(max_ptr + pid_s * n_batch + rows, run_max, mask=row_ok)
    tl.store(sum_ptr + pid_s * n_batch + rows, run_sum, mask=row_ok)


# ----------------------------------------------------------------------------------- gathered-rows kernel
@triton.jit
def _gathered_logits(q_ptr, m_ptr, b, idx, valid, dim, sq0, sq1, sm0, sm1, BLOCK_D: tl.constexpr):
    """[BLOCK_C] fp32 dot products of query ``b`` with bank rows ``idx`` (0 where not ``valid``)."""
    acc = tl.zeros(idx.shape, dtype=tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        q = tl.load(q_ptr + b * sq0 + offs_d * sq1, mask=offs_d < dim, other=0.0).to(tl.float32)
        m = tl.load(
            m_ptr + idx[:, None] * sm0 + offs_d[None, :] * sm1,
            mask=valid[:, None] & (offs_d[None, :] < dim),
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(m * q[None, :], axis=1)
    return acc


@triton.jit
def _accumulate_gathered(
    accp_ptr, accw_ptr, m_ptr, idx, valid, weights, probs, alpha, dim, sm0, sm1, SOFTMAX, BLOCK_D
):
    """Row ``accw += Σ_c w_c m_c``; with SOFTMAX also ``accp <- alpha · accp + Σ_c p_c m_c``."""
    for d0 in range(0, dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < dim
        m = tl.load(
            m_ptr + idx[:, None] * sm0 + offs_d[None, :] * sm1,
            mask=valid[:, None] & d_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        acc_w = tl.load(accw_ptr + offs_d, mask=d_ok, other=0.0) + tl.sum(weights[:, None] * m, axis=0)
        tl.store(accw_ptr + offs_d, acc_w, mask=d_ok)
        if SOFTMAX:
            acc_p = tl.load(accp_ptr + offs_d, mask=d_ok, other=0.0) * alpha
            tl.store(accp_ptr + offs_d, acc_p + tl.sum(probs[:, None] * m, axis=0), mask=d_ok)


@triton.jit
def _gathered_kernel(
    q_ptr,
    m_ptr,
    idx_ptr,
    w_ptr,
    lse_ptr,
    sum_ptr,
    wdot_ptr,
    accp_ptr,
    accw_ptr,
    n_slots,
    dim,
    sq0,
    sq1,
    sm0,
    sm1,
    temperature,
    SOFTMAX: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Query ``program_id(0)``: Σ w·s, and with SOFTMAX the logsumexp/sum over its valid slots."""
    b = tl.program_id(0).to(tl.int64)
    run_max = tl.full((), float("-inf"), tl.float32)
    run_sum = tl.full((), 0.0, tl.float32)
    wdot = tl.full((), 0.0, tl.float32)
    for c0 in range(0, n_slots, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        idx = tl.load(idx_ptr + b * n_slots + offs_c, mask=offs_c < n_slots, other=-1)
        valid = idx >= 0
        weights = tl.load(w_ptr + b * n_slots + offs_c, mask=offs_c < n_slots, other=0.0)
        logits = _gathered_logits(q_ptr, m_ptr, b, idx, valid, dim, sq0, sq1, sm0, sm1, BLOCK_D) / temperature
        wdot += tl.sum(weights * logits, axis=0)
        probs, alpha = weights, run_sum  # read by _accumulate_gathered only when SOFTMAX
        if SOFTMAX:
            logits = tl.where(valid, logits, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(logits, axis=0))
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # an all-padding tile so far
            alpha = tl.exp(run_max - safe_max)
            probs = tl.exp(logits - safe_max)
            run_sum = run_sum * alpha + tl.sum(probs, axis=0)
            run_max = new_max
        if NEED_GRAD:
            _accumulate_gathered(
                accp_ptr + b * dim, accw_ptr + b * dim, m_ptr, idx, valid, weights, probs, alpha, dim,
                sm0, sm1, SOFTMAX, BLOCK_D,
            )  # fmt: skip
    tl.store(wdot_ptr + b, wdot)
    if SOFTMAX:
        tl.store(lse_ptr + b, run_max + tl.log(run_sum))
        tl.store(sum_ptr + b, run_sum)


# ------------------------------------------------------------------------------------------ python side
def _empty_terms(queries: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The ``B = 0`` result: (per_query [0], grad [0, D] or None), float32."""
    grad = torch.zeros(queries.shape, dtype=torch.float32, device=queries.device) if need_grad else None
    return torch.zeros(0, dtype=torch.float32, device=queries.device), grad


def _split_count(query_blocks: int, bank_tiles: int, device: torch.device, splits: int | None) -> int:
    """Bank slices per query block: enough programs for about two per multiprocessor (1 off the GPU)."""
    if check_optional_positive_int("splits", splits) is not None:
        return min(splits, bank_tiles)
    if device.type != "cuda":
        return 1
    target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(bank_tiles, triton.cdiv(target, query_blocks)))


def _full_softmax(
    queries: Tensor, bank: Tensor, temperature: float, need_grad: bool, splits: int | None
) -> tuple[Tensor, Tensor | None]:
    """(lse [B] fp32, Σ_n softmax(s_b)_n m_n [B, D] fp32 or None) over the whole bank, one pass."""
    (batch, dim), n_rows, device = queries.shape, bank.shape[0], queries.device
    query_blocks, bank_tiles = triton.cdiv(batch, BLOCK_B), triton.cdiv(n_rows, BLOCK_N)
    tiles_per_split = triton.cdiv(bank_tiles, _split_count(query_blocks, bank_tiles, device, splits))
    n_splits = triton.cdiv(bank_tiles, tiles_per_split)  # every slice holds at least one row
    run_max = torch.empty(n_splits, batch, dtype=torch.float32, device=device)
    run_sum = torch.empty_like(run_max)
    acc_shape = (n_splits, batch, dim) if need_grad else (1,)
    acc = torch.zeros(acc_shape, dtype=torch.float32, device=device)
    _full_bank_kernel[(query_blocks, n_splits)](
        queries, bank, run_max, run_sum, acc, batch, n_rows, dim, tiles_per_split * BLOCK_N,
        *queries.stride(), *bank.stride(), temperature,
        NEED_GRAD=need_grad, NATIVE=native_dot(queries, bank),
        BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
    )  # fmt: skip
    top = run_max.amax(dim=0)  # [B]: merge the slices' partial softmax statistics
    scale = torch.exp(run_max - top)  # [S, B]
    total = (run_sum * scale).sum(dim=0)
    lse = top + torch.log(total)
    if not need_grad:
        return lse, None
    expected = (acc * scale[:, :, None]).sum(dim=0) if n_splits > 1 else acc[0]
    return lse, expected / total[:, None]


def _gathered_terms(
    queries: Tensor, bank: Tensor, index: Tensor, weights: Tensor, temperature: float, softmax: bool,
    need_grad: bool,
) -> dict[str, Tensor]:  # fmt: skip
    """Per-query terms over indexed bank rows (``index`` [B, K], −1 = padding): a dict of fp32 tensors
    ``wdot`` [B] = Σ_j w_bj s_bj, ``acc_w`` [B, D] = Σ_j w_bj m_j (with ``need_grad``) and, with
    ``softmax``, ``lse`` [B] over the valid slots and ``expected`` [B, D] = Σ_j p_bj m_j (with ``need_grad``).
    """
    (batch, dim), device = queries.shape, queries.device
    index, weights = index.contiguous(), weights.to(torch.float32).contiguous()
    out = {name: torch.empty(batch, dtype=torch.float32, device=device) for name in ("lse", "sum", "wdot")}
    acc_shape = (batch, dim) if need_grad else (1,)
    out["expected"] = torch.zeros(acc_shape if softmax else (1,), dtype=torch.float32, device=device)
    out["acc_w"] = torch.zeros(acc_shape, dtype=torch.float32, device=device)
    _gathered_kernel[(batch,)](
        queries, bank, index, weights, out["lse"], out["sum"], out["wdot"], out["expected"], out["acc_w"],
        index.shape[1], dim, *queries.stride(), *bank.stride(), temperature,
        SOFTMAX=softmax, NEED_GRAD=need_grad, BLOCK_C=BLOCK_C, BLOCK_D=BLOCK_D,
    )  # fmt: skip
    if softmax and need_grad:
        out["expected"] = out["expected"] / out["sum"][:, None]
    return out


def triton_loss_full_terms(
    queries: Tensor,
    bank: Tensor,
    positives: Tensor,
    weights: Tensor,
    temperature: float,
    need_grad: bool,
    *,
    splits: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Per-query whole-bank contrastive loss and its gradient, one pass over the bank (module docstring).

    Args:
        queries: [B, D] float32/float16/bfloat16, any strides, on CUDA (or CPU under TRITON_INTERPRET=1).
        bank: [N, D] float32/float16/bfloat16, any strides, same device; never copied.
        positives: [B, P] int64 in [−1, N), −1 = padding, >= 1 valid per row.
        weights: [B, P] float32, >= 0, exactly 0 on padding.
        temperature: positive float.
        need_grad: also return the gradient.
        splits: bank slices per query block (None: enough to fill the device; 1 off the GPU).

    Returns:
        (per_query [B] float32, grad [B, D] float32 = dL_b/dq_b, or None without ``need_grad``).

    Raises:
        RuntimeError: Triton cannot run here (no GPU and no TRITON_INTERPRET=1).
        ValueError: ``splits`` is not None or an int >= 1; the tensors are not on a CUDA device (without
            the interpreter).
    """
    require_runnable("triton_loss_full_terms", "queries", queries)
    if queries.shape[0] == 0:
        return _empty_terms(queries, need_grad)
    lse, expected = _full_softmax(queries, bank, temperature, need_grad, splits)
    pos = _gathered_terms(queries, bank, positives, weights, temperature, False, need_grad)
    total_weight = weights.to(torch.float32).sum(dim=1)  # [B]
    per_query = total_weight * lse - pos["wdot"]
    if not need_grad:
        return per_query, None
    return per_query, (total_weight[:, None] * expected - pos["acc_w"]) / temperature


def triton_loss_candidate_terms(
    queries: Tensor,
    bank: Tensor,
    candidates: Tensor,
    weights: Tensor,
    temperature: float,
    need_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Per-query candidate-set contrastive loss and its gradient, rows loaded by index (module docstring).

    Args:
        queries: [B, D] float32/float16/bfloat16, any strides, on CUDA (or CPU under TRITON_INTERPRET=1).
        bank: [N, D] float32/float16/bfloat16, any strides, same device; never copied or gathered.
        candidates: [B, C] int64 in [−1, N), −1 = padding, >= 1 valid per row; repeats are separate columns.
        weights: [B, C] float32, >= 0, exactly 0 on padding.
        temperature: positive float.
        need_grad: also return the gradient.

    Returns:
        (per_query [B] float32, grad [B, D] float32 = dL_b/dq_b, or None without ``need_grad``).

    Raises:
        RuntimeError: Triton cannot run here (no GPU and no TRITON_INTERPRET=1).
        ValueError: the tensors are not on a CUDA device (without the interpreter).
    """
    require_runnable("triton_loss_candidate_terms", "queries", queries)
    if queries.shape[0] == 0:
        return _empty_terms(queries, need_grad)
    terms = _gathered_terms(queries, bank, candidates, weights, temperature, True, need_grad)
    total_weight = weights.to(torch.float32).sum(dim=1)  # [B]
    per_query = total_weight * terms["lse"] - terms["wdot"]
    if not need_grad:
        return per_query, None
    return per_query, (total_weight[:, None] * terms["expected"] - terms["acc_w"]) / temperature
