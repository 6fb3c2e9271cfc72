"""Pure-torch reference definitions of the memory-bank contrastive losses and the bank update.

These functions are *the definition* that the Triton and CUDA kernels are tested against (METHODS.md §3,
issue 4). They favour clarity over speed, but they respect the memory contract of the fast paths where
the issue states one: the whole-bank loss never materialises the B×N similarity matrix.

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

from reidscale.kernels.reference_topk import describe_value

__all__ = ["bank_contrastive_loss_candidates", "bank_contrastive_loss_full", "bank_update"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NORMALIZE_EPS = 1e-12


# ----------------------------------------------------------------------------------------------- validation
def _check_float_matrix(name: str, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(tensor.shape)}")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16/bfloat16/float32/float64, got {tensor.dtype}")
    return tensor


def _check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")


def _check_queries_bank(queries: object, bank: object) -> tuple[torch.Tensor, torch.Tensor]:
    queries = _check_float_matrix("queries", queries)
    bank = _check_float_matrix("bank", bank)
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(
            f"queries and bank must share the feature size D, got {queries.shape[1]} and {bank.shape[1]}"
        )
    if bank.shape[0] == 0:
        raise ValueError("bank must have at least one row, got N = 0")
    return queries, bank


def _check_index_matrix(name: str, index: object, rows: int, bank_rows: int) -> torch.Tensor:
    """Check a ``[rows, K]`` int64 matrix of bank indices in ``[-1, bank_rows)`` (``-1`` = padding)."""
    if not isinstance(index, torch.Tensor) or index.dtype != torch.int64 or index.dim() != 2:
        raise ValueError(f"{name} must be a 2-D int64 tensor, got {describe_value(index)}")
    if index.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows (one per query), got {index.shape[0]}")
    if index.numel() and (int(index.min()) < -1 or int(index.max()) >= bank_rows):
        raise ValueError(f"{name} values must lie in [-1, {bank_rows}) (-1 = padding)")
    return index


def _check_weights(name: str, weights: object, padding: torch.Tensor) -> torch.Tensor:
    """Check finite, non-negative weights shaped like ``padding`` that are exactly 0 on padding slots."""
    if not isinstance(weights, torch.Tensor) or weights.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor, got {describe_value(weights)}")
    if weights.shape != padding.shape:
        raise ValueError(f"{name} must have shape {tuple(padding.shape)}, got {tuple(weights.shape)}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative")
    if bool((weights[padding] != 0).any()):
        raise ValueError(f"{name} must be 0 wherever the index is -1 (padding)")
    return weights


def _check_temperature(temperature: object) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a positive float, got {temperature!r}")
    if not (0.0 < float(temperature) < float("inf")):
        raise ValueError(f"temperature must be positive and finite, got {temperature!r}")
    return float(temperature)


def _accumulation_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (fp16/bf16 inputs are accumulated in fp32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# ------------------------------------------------------------------------------------ candidate-set form
def bank_contrastive_loss_candidates(
    queries: torch.Tensor,
    bank: torch.Tensor,
    candidates: torch.Tensor,
    weights: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Weighted multi-target cross-entropy over a per-query candidate set of bank rows (METHODS.md §3).

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

    Memory: gathers the ``[B, C, D]`` candidate rows in the accumulation dtype (kept by autograd for dQ).
    """
    queries, bank = _check_queries_bank(queries, bank)
    candidates = _check_index_matrix("candidates", candidates, queries.shape[0], bank.shape[0])
    padding = candidates < 0
    weights = _check_weights("weights", weights, padding)
    temperature = _check_temperature(temperature)
    _check_same_device(queries=queries, bank=bank, candidates=candidates, weights=weights)
    if candidates.shape[1] == 0 or bool(padding.all(dim=1).any()):
        raise ValueError("candidates must hold at least one valid (non -1) index in every row")
    dtype = _accumulation_dtype(queries, bank)

    rows = bank.detach()[candidates.clamp(min=0)].to(dtype)  # [B, C, D]
    logits = torch.einsum("bd,bcd->bc", queries.to(dtype), rows) / temperature  # [B, C]
    log_probs = torch.log_softmax(logits.masked_fill(padding, float("-inf")), dim=1)
    # Padding slots hold -inf log-probabilities and zero weight: zero them so that 0 · -inf is not NaN.
    per_query = -(weights.to(dtype) * log_probs.masked_fill(padding, 0.0)).sum(dim=1)  # [B]
    return per_query.mean()


# -------------------------------------------------------------------------------------- whole-bank form
def _chunk_logits(q: torch.Tensor, bank: torch.Tensor, start: int, stop: int, temperature: float):
    """``[B, stop - start]`` logits of ``q`` (already in the accumulation dtype) against bank rows."""
    chunk = bank[start:stop].to(q.dtype)  # [chunk, D]
    return (q @ chunk.T) / temperature, chunk


def _streaming_logsumexp(q: torch.Tensor, bank: torch.Tensor, temperature: float, chunk: int) -> torch.Tensor:
    """``[B]`` logsumexp over all N bank rows, one ``[B, chunk]`` block at a time (running max + sum)."""
    running_max = torch.full((q.shape[0],), float("-inf"), dtype=q.dtype, device=q.device)
    running_sum = torch.zeros_like(running_max)
    for start in range(0, bank.shape[0], chunk):
        logits, _ = _chunk_logits(q, bank, start, start + chunk, temperature)
        new_max = torch.maximum(running_max, logits.amax(dim=1))
        running_sum = running_sum * torch.exp(running_max - new_max) + torch.exp(
            logits - new_max[:, None]
        ).sum(dim=1)
        running_max = new_max
    return running_max + torch.log(running_sum)


def _positive_logits(q: torch.Tensor, bank: torch.Tensor, positives: torch.Tensor, temperature: float):
    """``[B, P]`` logits of the positives (padding slots hold an arbitrary finite value) and their rows."""
    rows = bank[positives.clamp(min=0)].to(q.dtype)  # [B, P, D]
    return torch.einsum("bd,bpd->bp", q, rows) / temperature, rows


class _FullBankContrastive(torch.autograd.Function):
    """Autograd wrapper: saves only ``[B]`` logsumexp statistics, streams the bank in both passes."""

    @staticmethod
    def forward(ctx, queries, bank, positives, weights, temperature, chunk):  # type: ignore[override]
        q = queries.detach().to(weights.dtype)
        lse = _streaming_logsumexp(q, bank, temperature, chunk)  # [B]
        pos_logits, _ = _positive_logits(q, bank, positives, temperature)  # [B, P]
        per_query = weights.sum(dim=1) * lse - (weights * pos_logits).sum(dim=1)
        ctx.save_for_backward(queries, bank, positives, weights, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        return per_query.mean()

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        queries, bank, positives, weights, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        q = queries.detach().to(weights.dtype)
        # Σ_n softmax_bn · m_n, recomputing each [B, chunk] logit block (the fused kernels avoid this).
        expected_row = torch.zeros_like(q)  # [B, D]
        for start in range(0, bank.shape[0], ctx.chunk):
            logits, rows = _chunk_logits(q, bank, start, start + ctx.chunk, ctx.temperature)
            expected_row += torch.exp(logits - lse[:, None]) @ rows
        _, pos_rows = _positive_logits(q, bank, positives, ctx.temperature)  # [B, P, D]
        weighted_pos = torch.einsum("bp,bpd->bd", weights, pos_rows)
        grad_q = weights.sum(dim=1, keepdim=True) * expected_row - weighted_pos
        grad_q = grad_q * (grad_loss / (q.shape[0] * ctx.temperature))
        return grad_q.to(queries.dtype), None, None, None, None, None


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

    Memory is ``O(B · bank_chunk)``: the forward streams over bank chunks with an online logsumexp and
    saves only the ``[B]`` logsumexp; the backward streams again and recomputes each chunk's logits to form
    ``dL/dq_b = (W_b · Σ_n softmax_bn m_n - Σ_p w_bp m_p) / (B · temperature)`` with ``W_b = Σ_p w_bp``.
    (This reference recomputes the chunk products in the backward; the fused kernels avoid that.)

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
    queries, bank = _check_queries_bank(queries, bank)
    positives = _check_index_matrix("positives", positives, queries.shape[0], bank.shape[0])
    padding = positives < 0
    if positives.shape[1] == 0 or bool(padding.all(dim=1).any()):
        raise ValueError("positives must hold at least one valid (non -1) index in every row")
    temperature = _check_temperature(temperature)
    chunk = _check_bank_chunk(bank_chunk, bank.shape[0])
    dtype = _accumulation_dtype(queries, bank)
    if positive_weights is None:
        valid = (~padding).to(dtype)
        weights = valid / valid.sum(dim=1, keepdim=True)
    else:
        weights = _check_weights("positive_weights", positive_weights, padding).to(dtype)
    _check_same_device(queries=queries, bank=bank, positives=positives, positive_weights=weights)
    return _FullBankContrastive.apply(queries, bank.detach(), positives, weights, temperature, chunk)


def _check_bank_chunk(bank_chunk: object, bank_rows: int) -> int:
    if bank_chunk is None:
        return bank_rows
    if isinstance(bank_chunk, bool) or not isinstance(bank_chunk, int) or bank_chunk < 1:
        raise ValueError(f"bank_chunk must be a positive int or None, got {bank_chunk!r}")
    return min(bank_chunk, bank_rows)


# ------------------------------------------------------------------------------------------- bank update
def bank_update(
    bank: torch.Tensor,
    indices: torch.Tensor,
    features: torch.Tensor,
    momentum: float,
    normalize: bool = True,
) -> None:
    """In place: ``M[i] <- normalise(momentum · M[i] + (1 - momentum) · f)`` for each (index, feature) pair.

    ``momentum = 0.5`` gives METHODS.md §3's ``normalise(0.5 · old + 0.5 · new)`` and the mixture-bank rule
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
    bank = _check_float_matrix("bank", bank)
    features = _check_float_matrix("features", features)
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64 or indices.dim() != 1:
        raise ValueError(f"indices must be a 1-D int64 tensor, got {describe_value(indices)}")
    if indices.shape[0] != features.shape[0] or features.shape[1] != bank.shape[1]:
        raise ValueError(
            f"features must have shape [len(indices), D] = [{indices.shape[0]}, {bank.shape[1]}], "
            f"got {tuple(features.shape)}"
        )
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= bank.shape[0]):
        raise ValueError(f"indices values must lie in [0, {bank.shape[0]})")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r}")
    _check_same_device(bank=bank, indices=indices, features=features)
    if indices.numel() == 0:
        return
    with torch.no_grad():
        _sequential_update(bank, indices, features, float(momentum), normalize)


def _sequential_update(
    bank: torch.Tensor, indices: torch.Tensor, features: torch.Tensor, momentum: float, normalize: bool
) -> None:
    """Apply the repeats of each index in batch order, one vectorised round per occurrence rank."""
    dtype = _accumulation_dtype(bank, features)
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
