"""Reference ``bank_topk``: the k best memory-bank rows per query, without ever forming the B×N matrix.

This module is the *definition* of the op; the Triton and CUDA kernels are tested against it.

Score of query ``b`` against bank row ``n`` (fp32 whatever the input dtype)::

    score[b, n] = Σ_i weight_i · (q_i[b] · m_i[n])  −  cam_penalty · [query_cams[b] == bank_cams[n]]

with ``q_i`` the i-th column block of ``queries`` (width D_i) and ``m_i`` the i-th bank (a single bank is
``[(bank, 1.0)]``). Each operand is converted to fp32 (exact for fp16/bf16), each ``q_i · m_i`` is an fp32
matmul, and the weighted terms are summed in fp32 in bank order.

Excluded rows: ``n == self_index[b]`` (self) and ``bank_labels[n] == query_labels[b]`` (positives). The
result holds the k best remaining rows per query, sorted by score descending, ties broken by the smaller
index; slots beyond the rows that exist hold index −1 and score −inf.

Multi-bank ranking (docs/methods.md): for L2-normalised rows ‖a − b‖² = 2 − 2 a·b, so the selection
distance λ_g‖g − G_n‖² + (1−λ_g)/8 Σ_k ‖l_k − L_kn‖² + λ_c [same camera] sorted ascending is the score
λ_g g·G_n + (1−λ_g)/8 Σ_k l_k·L_kn − (λ_c/2) [same camera] sorted descending: pass
``bank=[(G, λ_g), (L[0], (1−λ_g)/8), ..., (L[7], (1−λ_g)/8)]``, ``queries=[g | l_1 | ... | l_8]`` and
``cam_penalty=λ_c/2``. The banks are read chunk by chunk through views; nothing is concatenated.

Memory: the bank is processed ``bank_chunk`` rows at a time with a running top-k merge, so the working set
is O(B·(k + bank_chunk)); the merge is a lexicographic (score desc, index asc) sort, so ties are exact
across chunk boundaries and the result does not depend on ``bank_chunk``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

#: largest k the op supports (the fused kernels keep k candidates per query on chip)
MAX_K = 4096
#: bank rows per chunk when ``bank_chunk`` is not given
DEFAULT_BANK_CHUNK = 8192
#: input dtypes accepted for queries and banks; scores are always float32
FEATURE_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)

BankSpec = Tensor | Sequence[tuple[Tensor, float]]


def bank_topk(
    queries: Tensor,
    bank: BankSpec,
    k: int,
    *,
    query_labels: Tensor | None = None,
    bank_labels: Tensor | None = None,
    self_index: Tensor | None = None,
    query_cams: Tensor | None = None,
    bank_cams: Tensor | None = None,
    cam_penalty: float = 0.0,
    return_positive_scores: bool = False,
    bank_chunk: int | None = None,
) -> tuple[Tensor, ...]:
    """Top-k bank rows per query by (weighted) inner product, positives and self excluded.

    Args:
        queries: [B, D] float32/float16/bfloat16; with several banks D = Σ D_i and column block i
            (in bank order) is scored against bank i.
        bank: [N, D] tensor, or a sequence of ``(bank_i [N, D_i], weight_i)`` pairs (finite float weights,
            all banks with the same N, same device as ``queries``; dtypes may differ).
        k: results per query, 1 ≤ k ≤ 4096; k may exceed N (the tail is padding).
        query_labels, bank_labels: [B] and [N] integer tensors, given together; rows with equal labels
            are excluded (equality only: −1 matches −1).
        self_index: [B] integer tensor, the bank row of each query (excluded), or −1 for none.
        query_cams, bank_cams: [B] and [N] integer tensors, given together; ``cam_penalty`` (finite) is
            subtracted from the score where they are equal. A non-zero penalty needs the cameras.
        return_positive_scores: also return the excluded label-positives (needs labels), see Returns.
        bank_chunk: bank rows per step (≥ 1, default 8192); the result does not depend on it.

    Returns:
        ``(scores [B, k] float32, indices [B, k] int64)``, sorted by score descending then index
        ascending, padded with (−inf, −1). With ``return_positive_scores=True`` two more tensors follow:
        ``(pos_scores [B, P] float32, pos_indices [B, P] int64)``: every bank row whose label equals the
        query's label, other than ``self_index[b]``, with the same score definition (cam penalty
        included), in the same order and padding, where P = the largest positive count over the batch
        (0 when there are none). Memory for this part is O(B·P).

    Raises:
        ValueError: a malformed argument (shape, dtype, device, range, pairing), or a non-finite score
            (non-finite inputs, or values that overflow fp32).
    """
    banks = _check_banks(queries, bank)
    n_rows = banks[0][0].shape[0]
    _check_k(k)
    chunk = _check_chunk(bank_chunk)
    labels = _check_pair("query_labels", query_labels, "bank_labels", bank_labels, queries, n_rows)
    cams = _check_pair("query_cams", query_cams, "bank_cams", bank_cams, queries, n_rows)
    self_index = _check_self_index(self_index, queries, n_rows)
    penalty = _check_penalty(cam_penalty, cams)
    if not isinstance(return_positive_scores, bool):
        raise ValueError(
            f"return_positive_scores must be a bool, got {type(return_positive_scores).__name__}"
        )
    if return_positive_scores and labels is None:
        raise ValueError(
            "return_positive_scores=True needs query_labels and bank_labels (positives are by label)"
        )

    n_pos = 0
    if return_positive_scores:
        n_pos = _max_positive_count(labels, self_index, n_rows, chunk)
    q_blocks = _query_blocks(queries, banks)
    best = _empty_topk(queries.shape[0], k, queries.device)
    best_pos = _empty_topk(queries.shape[0], n_pos, queries.device)
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        scores = _chunk_scores(q_blocks, banks, start, stop, cams, penalty)
        is_self, is_pos = _chunk_exclusions(labels, self_index, start, stop, queries.shape[0], queries.device)
        ids = torch.arange(start, stop, device=queries.device).expand_as(scores)
        minus_one = torch.full_like(ids, -1)
        best = _merge(best, scores, torch.where(is_self | is_pos, minus_one, ids), k)
        if n_pos > 0:
            best_pos = _merge(best_pos, scores, torch.where(is_pos & ~is_self, ids, minus_one), n_pos)
    return (*best, *best_pos) if return_positive_scores else best


# --------------------------------------------------------------------------------------------- core


def _query_blocks(queries: Tensor, banks: list[tuple[Tensor, float]]) -> list[Tensor]:
    """The [B, D_i] float32 column block of ``queries`` that goes with each bank, in bank order."""
    blocks, offset = [], 0
    for rows, _ in banks:
        blocks.append(queries[:, offset : offset + rows.shape[1]].to(torch.float32))
        offset += rows.shape[1]
    return blocks


def _chunk_scores(
    q_blocks: list[Tensor],
    banks: list[tuple[Tensor, float]],
    start: int,
    stop: int,
    cams: tuple[Tensor, Tensor] | None,
    penalty: float,
) -> Tensor:
    """[B, stop − start] float32 scores of bank rows start..stop−1 (views of the banks, cast per chunk)."""
    scores = None
    for q, (rows, weight) in zip(q_blocks, banks, strict=True):
        term = weight * (q @ rows[start:stop].to(torch.float32).T)
        scores = term if scores is None else scores + term
    if cams is not None and penalty != 0.0:
        same_cam = cams[0][:, None] == cams[1][None, start:stop]
        scores = scores - penalty * same_cam.to(torch.float32)
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(
            f"non-finite score for bank rows {start}..{stop - 1}: queries/bank must be finite and their "
            "products must fit in float32"
        )
    return scores


def _chunk_exclusions(
    labels: tuple[Tensor, Tensor] | None,
    self_index: Tensor | None,
    start: int,
    stop: int,
    batch: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """(is_self, is_positive): [B, stop − start] bool masks for bank rows start..stop−1."""
    ids = torch.arange(start, stop, device=device)
    if self_index is None:
        is_self = torch.zeros(batch, stop - start, dtype=torch.bool, device=device)
    else:
        is_self = self_index[:, None] == ids[None, :]
    if labels is None:
        is_pos = torch.zeros(batch, stop - start, dtype=torch.bool, device=device)
    else:
        is_pos = labels[0][:, None] == labels[1][None, start:stop]
    return is_self, is_pos


def _merge(best: tuple[Tensor, Tensor], scores: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Merge a chunk's candidates (``ids`` −1 = not a candidate) into a running [B, k] top-k."""
    all_scores = torch.cat([best[0], scores], dim=1)
    all_ids = torch.cat([best[1], ids], dim=1)
    all_scores, all_ids = sort_by_score_then_index(all_scores, all_ids)
    return all_scores[:, :k].contiguous(), all_ids[:, :k].contiguous()


def sort_by_score_then_index(scores: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by (score descending, index ascending), entries with index −1 last as (−inf, −1).

    Args:
        scores: [B, M] float tensor (the scores of entries with index ≥ 0 must not be NaN).
        indices: [B, M] int64 tensor, −1 for an empty slot.

    Returns:
        (scores [B, M], indices [B, M]) sorted; three stable sorts make the order lexicographic and
        independent of the input order.
    """
    order = torch.sort(indices, dim=1, stable=True).indices
    scores, indices = scores.gather(1, order), indices.gather(1, order)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    scores, indices = scores.gather(1, order), indices.gather(1, order)
    order = torch.sort((indices >= 0).to(torch.int8), dim=1, descending=True, stable=True).indices
    scores, indices = scores.gather(1, order), indices.gather(1, order)
    empty = indices < 0
    return scores.masked_fill(empty, -math.inf), indices


def _empty_topk(batch: int, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    scores = torch.full((batch, k), -math.inf, dtype=torch.float32, device=device)
    return scores, torch.full((batch, k), -1, dtype=torch.int64, device=device)


def _max_positive_count(
    labels: tuple[Tensor, Tensor], self_index: Tensor | None, n_rows: int, chunk: int
) -> int:
    """Largest number of label-positives (self excluded) of any query, counted chunk by chunk."""
    batch, device = labels[0].shape[0], labels[0].device
    counts = torch.zeros(batch, dtype=torch.int64, device=device)
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        is_self, is_pos = _chunk_exclusions(labels, self_index, start, stop, batch, device)
        counts += (is_pos & ~is_self).sum(dim=1)
    return int(counts.max()) if batch > 0 else 0


# --------------------------------------------------------------------------------------- validation


class SingleBankArgs(NamedTuple):
    """Checked options of a single-bank ``bank_topk`` call (int64 vectors; ``cams`` None when unused)."""

    labels: tuple[Tensor, Tensor] | None
    self_index: Tensor | None
    cams: tuple[Tensor, Tensor] | None
    penalty: float


def check_single_bank(
    kernel: str,
    queries: object,
    bank: object,
    k: object,
    query_labels: object,
    bank_labels: object,
    self_index: object,
    query_cams: object,
    bank_cams: object,
    cam_penalty: object,
) -> SingleBankArgs:
    """The checks of :func:`bank_topk` for a fused kernel that takes one bank tensor (named ``kernel``).

    Raises:
        ValueError: a bank list, or any argument the reference would reject, with the same message.
    """
    if not isinstance(bank, Tensor):
        raise ValueError(
            f"bank must be a single [N, D] tensor for the {kernel} kernel, got {describe_value(bank)}"
        )
    _check_banks(queries, bank)
    _check_k(k)
    n_rows = bank.shape[0]
    labels = _check_pair("query_labels", query_labels, "bank_labels", bank_labels, queries, n_rows)
    cams = _check_pair("query_cams", query_cams, "bank_cams", bank_cams, queries, n_rows)
    selves = _check_self_index(self_index, queries, n_rows)
    penalty = _check_penalty(cam_penalty, cams)
    return SingleBankArgs(labels, selves, cams if penalty != 0.0 else None, penalty)


def describe_value(value: object) -> str:
    """A short description of an argument for error messages (dtype, shape, device of a tensor)."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    return type(value).__name__


def _check_features(name: str, value: object, device: torch.device | None) -> Tensor:
    if not isinstance(value, Tensor) or value.dim() != 2 or value.dtype not in FEATURE_DTYPES:
        raise ValueError(f"{name} must be a 2-D float32/float16/bfloat16 tensor, got {describe_value(value)}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} must be on {device} (the queries' device), got {value.device}")
    return value


def _check_banks(queries: object, bank: object) -> list[tuple[Tensor, float]]:
    """The bank as a list of (rows [N, D_i], weight) pairs whose widths add up to the queries' D."""
    queries = _check_features("queries", queries, None)
    if isinstance(bank, Tensor):
        pairs: list[tuple[Tensor, float]] = [(_check_features("bank", bank, queries.device), 1.0)]
    elif isinstance(bank, Sequence) and not isinstance(bank, str) and len(bank) > 0:
        pairs = [_check_bank_pair(i, item, queries.device) for i, item in enumerate(bank)]
    else:
        raise ValueError(
            "bank must be a [N, D] tensor or a non-empty sequence of (tensor, weight) pairs, "
            f"got {describe_value(bank)}"
        )
    sizes = {rows.shape[0] for rows, _ in pairs}
    if len(sizes) != 1:
        raise ValueError(f"bank: all banks must have the same number of rows N, got {sorted(sizes)}")
    width = sum(rows.shape[1] for rows, _ in pairs)
    if width != queries.shape[1]:
        raise ValueError(
            f"queries must have D = {width} columns (the sum of the bank widths), got {queries.shape[1]}"
        )
    return pairs


def _check_bank_pair(i: int, item: object, device: torch.device) -> tuple[Tensor, float]:
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise ValueError(f"bank[{i}] must be a (tensor [N, D_i], weight) pair, got {describe_value(item)}")
    rows = _check_features(f"bank[{i}][0]", item[0], device)
    weight = item[1]
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise ValueError(f"bank[{i}][1] (the weight) must be a finite float, got {weight!r}")
    return rows, float(weight)


def _check_k(k: object) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an int in [1, {MAX_K}], got {k!r}")


def _check_chunk(bank_chunk: object) -> int:
    if bank_chunk is None:
        return DEFAULT_BANK_CHUNK
    if isinstance(bank_chunk, bool) or not isinstance(bank_chunk, int) or bank_chunk < 1:
        raise ValueError(f"bank_chunk must be None or an int >= 1, got {bank_chunk!r}")
    return bank_chunk


def _check_index_vector(name: str, value: object, length: int, device: torch.device) -> Tensor:
    integer = isinstance(value, Tensor) and not value.is_floating_point() and not value.is_complex()
    if not integer or value.dtype == torch.bool or value.dim() != 1 or value.shape[0] != length:
        raise ValueError(
            f"{name} must be a 1-D integer tensor of length {length}, got {describe_value(value)}"
        )
    if value.device != device:
        raise ValueError(f"{name} must be on {device} (the queries' device), got {value.device}")
    return value


def _check_pair(
    q_name: str, q_value: object, b_name: str, b_value: object, queries: Tensor, n_rows: int
) -> tuple[Tensor, Tensor] | None:
    """Per-query and per-row integer vectors that must be given together (labels, cameras)."""
    if (q_value is None) != (b_value is None):
        raise ValueError(f"{q_name} and {b_name} must be given together (got only one of them)")
    if q_value is None:
        return None
    q_vec = _check_index_vector(q_name, q_value, queries.shape[0], queries.device)
    b_vec = _check_index_vector(b_name, b_value, n_rows, queries.device)
    return q_vec.to(torch.int64), b_vec.to(torch.int64)


def _check_self_index(self_index: object, queries: Tensor, n_rows: int) -> Tensor | None:
    if self_index is None:
        return None
    vec = _check_index_vector("self_index", self_index, queries.shape[0], queries.device).to(torch.int64)
    if vec.numel() > 0 and (int(vec.min()) < -1 or int(vec.max()) >= n_rows):
        raise ValueError(
            f"self_index values must be in [-1, N) = [-1, {n_rows}), got range "
            f"[{int(vec.min())}, {int(vec.max())}]"
        )
    return vec


def _check_penalty(cam_penalty: object, cams: tuple[Tensor, Tensor] | None) -> float:
    if isinstance(cam_penalty, bool) or not isinstance(cam_penalty, int | float):
        raise ValueError(f"cam_penalty must be a finite float, got {cam_penalty!r}")
    if not math.isfinite(cam_penalty):
        raise ValueError(f"cam_penalty must be a finite float, got {cam_penalty!r}")
    if cam_penalty != 0.0 and cams is None:
        raise ValueError("cam_penalty != 0 needs query_cams and bank_cams")
    return float(cam_penalty)
