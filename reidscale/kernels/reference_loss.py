"""Pure-torch reference definitions of the memory-bank contrastive losses and the bank update.

These functions are *the definition* that the Triton and CUDA kernels are tested against
(docs/methods.md#selective-contrastive-learning). They favour clarity over speed, but they respect the
memory contract of the fast paths where there is one: the whole-bank loss never materialises the B×N
similarity matrix.

Conventions shared by every function here:

- Queries ``Q`` are ``[B, D]`` and the bank ``M`` is ``[N, D]``; both may be float16, bfloat16, float32 or
  float64 (not necessarily the same). Scores are accumulated in float64 when either input is float64 and
  in float32 otherwise; the returned loss has that accumulation dtype.
- Logits are ``s = q · m / temperature`` (the paper's ``10 · x · Mᵀ`` is ``temperature = 0.1``).
- Index tensors are int64; ``-1`` marks a padding slot, which takes no part in any softmax and must carry a
  weight of exactly 0.
- The bank is a buffer: it never receives a gradient, even when ``bank.requires_grad`` is set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reidscale.kernels.checks import (
    accumulation_dtype,
    check_candidate_inputs,
    check_full_inputs,
    check_update_inputs,
)

__all__ = [
    "bank_contrastive_loss_candidates",
    "bank_contrastive_loss_full",
    "bank_update",
    "full_bank_terms",
    "loss_from_terms",
    "needs_query_grad",
]

_NORMALIZE_EPS = 1e-12


# ------------------------------------------------------------------------------- loss from per-query terms
class _LossFromTerms(torch.autograd.Function):
    """``mean_b per_query[b]`` whose gradient w.r.t. the queries was computed in the forward pass.

    Every backend of the bank losses returns ``(per_query [B], grad [B, D])`` with ``grad[b] = dL_b/dq_b``
    computed during its one streaming pass over the bank, so the backward is a scale: it never touches the
    bank again and never recomputes the B×N product.
    """

    @staticmethod
    def forward(ctx, queries, per_query, grad):  # type: ignore[override]
        ctx.save_for_backward(grad)
        ctx.batch, ctx.queries_dtype = queries.shape[0], queries.dtype
        return per_query.mean()

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad * (grad_loss / ctx.batch)).to(ctx.queries_dtype), None, None


def loss_from_terms(
    queries: torch.Tensor, per_query: torch.Tensor, grad: torch.Tensor | None
) -> torch.Tensor:
    """Scalar ``mean_b per_query[b]`` back-propagating ``grad [B, D]`` (dL_b/dq_b, or None) to the queries.

    Args:
        queries: ``[B, D]`` the tensor that receives the gradient.
        per_query: ``[B]`` per-query losses (already computed, no autograd history).
        grad: ``[B, D]`` per-query gradients, or None when no gradient is needed.
    """
    if grad is None:
        return per_query.mean()
    return _LossFromTerms.apply(queries, per_query, grad)


def needs_query_grad(queries: torch.Tensor) -> bool:
    """Whether the loss must produce ``dL/dq``: grad mode on and ``queries.requires_grad``."""
    return torch.is_grad_enabled() and queries.requires_grad


# ------------------------------------------------------------------------------------ candidate-set form
def bank_contrastive_loss_candidates(
    queries: torch.Tensor,
    bank: torch.Tensor,
    candidates: torch.Tensor,
    weights: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Weighted multi-target cross-entropy over a per-query candidate set of bank rows (docs/methods.md).

    For query ``b`` with candidates ``c_b1 .. c_bC`` (self, positives, negatives) the logits are
    ``s_bj = q_b · M[c_bj] / temperature`` and ``L_b = -Σ_j w_bj · log softmax_j(s_b)``, the softmax running
    over the valid (non ``-1``) candidates of that row only; the result is ``mean_b L_b``. A repeated index
    within a row counts as that many softmax columns (the candidate list is taken as given).

    Args:
        queries: ``[B, D]`` float16/bfloat16/float32/float64; the only input that receives a gradient.
        bank: ``[N, D]`` floating; treated as a constant buffer (detached).
        candidates: ``[B, C]`` int64 in ``[-1, N)``; ``-1`` = padding. Every row needs one valid candidate.
        weights: ``[B, C]`` floating, finite, ``>= 0``, exactly 0 on padding slots (need not sum to 1).
        temperature: positive float.

    Returns:
        Scalar ``[]`` tensor in the accumulation dtype (float64 if any input is float64, else float32).

    Memory: gathers the ``[B, C, D]`` candidate rows in the accumulation dtype (kept by autograd for dQ);
    this definition is plain autograd, the fused kernels load the rows by index instead.
    """
    queries, bank, candidates, weights, temperature = check_candidate_inputs(
        queries, bank, candidates, weights, temperature
    )
    padding = candidates < 0
    dtype = accumulation_dtype(queries, bank)
    rows = bank.detach()[candidates.clamp(min=0)].to(dtype)  # [B, C, D]
    logits = torch.einsum("bd,bcd->bc", queries.to(dtype), rows) / temperature  # [B, C]
    log_probs = torch.log_softmax(logits.masked_fill(padding, float("-inf")), dim=1)
    # Padding slots hold -inf log-probabilities and zero weight: zero them so that 0 · -inf is not NaN.
    per_query = -(weights.to(dtype) * log_probs.masked_fill(padding, 0.0)).sum(dim=1)  # [B]
    return per_query.mean()


# -------------------------------------------------------------------------------------- whole-bank form
def full_bank_terms(
    queries: torch.Tensor,
    bank: torch.Tensor,
    positives: torch.Tensor,
    weights: torch.Tensor,
    temperature: float,
    chunk: int,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-query whole-bank InfoNCE and its gradient, in one streaming pass over the bank (inputs checked).

    With ``s_bn = q_b · m_n / temperature``, ``lse_b = logsumexp_n s_bn`` and ``W_b = Σ_p w_bp``::

        per_query[b] = W_b · lse_b − Σ_p w_bp · s_b,p
        grad[b]      = (W_b · Σ_n softmax(s_b)_n · m_n − Σ_p w_bp · m_p) / temperature   (= dL_b/dq_b)

    Each ``[B, chunk]`` logit block updates a running max, a running sum of exponentials and (when
    ``need_grad``) a running ``[B, D]`` sum of ``exp(s − max) · m``, rescaled whenever the max moves, as in
    a flash-attention forward with the bank as both keys and values. Memory O(B·(chunk + D + P·D)).

    Returns:
        ``(per_query [B], grad [B, D] or None)`` in the accumulation dtype of ``weights``.
    """
    q = queries.detach().to(weights.dtype)
    bank = bank.detach()
    running_max = torch.full((q.shape[0],), float("-inf"), dtype=q.dtype, device=q.device)
    running_sum = torch.zeros_like(running_max)
    expected_row = torch.zeros_like(q) if need_grad else None  # [B, D], scaled by exp(-running_max)
    for start in range(0, bank.shape[0], chunk):
        rows = bank[start : start + chunk].to(q.dtype)  # [chunk, D]
        logits = (q @ rows.T) / temperature  # [B, chunk]
        new_max = torch.maximum(running_max, logits.amax(dim=1))
        rescale = torch.exp(running_max - new_max)  # 0 on the first block
        probs = torch.exp(logits - new_max[:, None])
        running_sum = running_sum * rescale + probs.sum(dim=1)
        if expected_row is not None:
            expected_row = expected_row * rescale[:, None] + probs @ rows
        running_max = new_max
    pos_rows = bank[positives.clamp(min=0)].to(q.dtype)  # [B, P, D]
    pos_logits = torch.einsum("bd,bpd->bp", q, pos_rows) / temperature
    total_weight = weights.sum(dim=1)
    per_query = total_weight * (running_max + torch.log(running_sum)) - (weights * pos_logits).sum(dim=1)
    if expected_row is None:
        return per_query, None
    weighted_pos = torch.einsum("bp,bpd->bd", weights, pos_rows)
    grad = (total_weight[:, None] * expected_row / running_sum[:, None] - weighted_pos) / temperature
    return per_query, grad


def bank_contrastive_loss_full(
    queries: torch.Tensor,
    bank: torch.Tensor,
    positives: torch.Tensor,
    positive_weights: torch.Tensor | None,
    temperature: float,
    bank_chunk: int | None = None,
) -> torch.Tensor:
    """Multi-positive InfoNCE with the softmax over ALL bank rows (MoCo queue / instance memory).

    ``L_b = -Σ_p w_bp · (s_b,p - logsumexp_n s_b,n)`` with ``s_b,n = q_b · m_n / temperature``; the result is
    ``mean_b L_b``. Weights default to uniform over the valid positives of each row (``1 / #valid``).

    Memory is ``O(B · (bank_chunk + D))``: one streaming pass over bank chunks computes the online
    logsumexp and, when the queries need a gradient, ``dL/dq`` itself (see :func:`full_bank_terms`); the
    backward only scales that saved ``[B, D]`` gradient, so the B×N product is never recomputed.

    Args:
        queries: ``[B, D]`` float16/bfloat16/float32/float64; the only input that receives a gradient.
        bank: ``[N, D]`` floating; a constant buffer (never gets a gradient).
        positives: ``[B, P]`` int64 in ``[-1, N)``, ``-1`` = padding; each row needs one valid positive.
        positive_weights: ``[B, P]`` floating, finite, ``>= 0``, 0 on padding; or None for uniform.
        temperature: positive float.
        bank_chunk: bank rows per streamed block, ``>= 1``; None means all N rows in one block.

    Returns:
        Scalar ``[]`` tensor in the accumulation dtype (float64 if any input is float64, else float32).
    """
    queries, bank, positives, weights, temperature, chunk = check_full_inputs(
        queries, bank, positives, positive_weights, temperature, bank_chunk
    )
    per_query, grad = full_bank_terms(
        queries, bank, positives, weights, temperature, chunk, needs_query_grad(queries)
    )
    return loss_from_terms(queries, per_query, grad)


# ------------------------------------------------------------------------------------------- bank update
def bank_update(
    bank: torch.Tensor,
    indices: torch.Tensor,
    features: torch.Tensor,
    momentum: float,
    normalize: bool = True,
) -> None:
    """In place: ``M[i] <- normalise(momentum · M[i] + (1 - momentum) · f)`` for each (index, feature) pair.

    ``momentum = 0.5`` gives the G/L bank rule ``normalise(0.5 · old + 0.5 · new)`` and the mixture-bank rule
    ``M[y] <- normalise((M[y] + x) / 2)``. ``normalise`` is L2 with ``max(norm, 1e-12)`` in the denominator
    (a zero row stays zero); ``normalize=False`` skips it.

    Repeated indices: the updates are applied **sequentially in batch order**, as if the pairs were
    processed one at a time (index 3 at batch positions 0 and 5 gets feature 0, then feature 5). The
    intermediate rows are kept in the accumulation dtype and the bank dtype is written once at the end,
    so an fp16/bf16 bank is rounded once per call, not once per repeat.

    Args:
        bank: ``[N, D]`` floating, modified in place (no gradient is recorded).
        indices: ``[B]`` int64 in ``[0, N)``.
        features: ``[B, D]`` floating (detached).
        momentum: weight of the old row, in ``[0, 1]``.
        normalize: L2-normalise each updated row.
    """
    bank, indices, features, momentum = check_update_inputs(bank, indices, features, momentum)
    if indices.numel() == 0:
        return
    with torch.no_grad():
        _sequential_update(bank, indices, features, float(momentum), normalize)


def _sequential_update(
    bank: torch.Tensor, indices: torch.Tensor, features: torch.Tensor, momentum: float, normalize: bool
) -> None:
    """Apply the repeats of each index in batch order, one vectorised round per occurrence rank."""
    dtype = accumulation_dtype(bank, features)
    unique, slot = torch.unique(indices, return_inverse=True)  # slot: [B] row of `unique` per pair
    rows = bank[unique].to(dtype)  # [U, D] working copy
    new = features.detach().to(dtype)
    # rank[i] = how many earlier batch positions hold the same index as position i.
    order = torch.argsort(slot, stable=True)
    counts = torch.bincount(slot, minlength=unique.numel())
    starts = torch.cumsum(counts, dim=0) - counts
    rank = torch.empty_like(slot)
    rank[order] = torch.arange(slot.numel(), device=slot.device) - starts[slot[order]]
    for r in range(int(counts.max())):
        pairs = (rank == r).nonzero().squeeze(1)  # distinct slots within a round
        target = slot[pairs]
        updated = momentum * rows[target] + (1.0 - momentum) * new[pairs]
        rows[target] = F.normalize(updated, dim=1, eps=_NORMALIZE_EPS) if normalize else updated
    bank[unique] = rows.to(bank.dtype)
