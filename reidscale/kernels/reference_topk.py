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

Memory: the bank is processed ``bank_chunk`` rows at a time and ranked with the exact chunked top-k of
:mod:`reidscale.kernels.chunked_topk` (the one the neighbour search's torch backend uses too), so the
working set is O(B·(k + bank_chunk)), ties are exact across chunk boundaries and the result does not
depend on ``bank_chunk``.

Arguments are checked by :mod:`reidscale.kernels.checks`; :func:`bank_topk` takes the op's keyword
arguments, :func:`torch_bank_topk` is the torch backend on checked inputs (an :class:`Exclusions`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reidscale.kernels.checks import Exclusions, check_topk_call
from reidscale.kernels.chunked_topk import RunningTopK

#: bank rows per chunk when ``bank_chunk`` is not given
DEFAULT_BANK_CHUNK = 8192

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
    call = check_topk_call(
        queries,
        bank,
        k,
        query_labels=query_labels,
        bank_labels=bank_labels,
        self_index=self_index,
        query_cams=query_cams,
        bank_cams=bank_cams,
        cam_penalty=cam_penalty,
        return_positive_scores=return_positive_scores,
        bank_chunk=bank_chunk,
    )
    return torch_bank_topk(
        queries,
        call.banks,
        k,
        call.exclusions,
        bank_chunk=call.bank_chunk,
        return_positive_scores=call.return_positive_scores,
    )


def torch_bank_topk(
    queries: Tensor,
    banks: list[tuple[Tensor, float]],
    k: int,
    exclusions: Exclusions,
    *,
    bank_chunk: int | None = None,
    return_positive_scores: bool = False,
) -> tuple[Tensor, ...]:
    """The torch backend of ``bank_topk`` on checked inputs (see :func:`bank_topk` for the results).

    Args:
        queries: [B, D], checked with the banks by ``checks.check_banks``.
        banks: ``(rows [N, D_i], weight)`` pairs from ``checks.check_banks``.
        k: 1 ≤ k ≤ 4096.
        exclusions: built by :meth:`Exclusions.check` for this call.
        bank_chunk: bank rows per step (None: ``DEFAULT_BANK_CHUNK``).
        return_positive_scores: also return the label-positives (the exclusions carry labels).
    """
    n_rows, batch, device = banks[0][0].shape[0], queries.shape[0], queries.device
    chunk = bank_chunk or DEFAULT_BANK_CHUNK
    n_pos = _max_positive_count(exclusions, batch, n_rows, chunk, device) if return_positive_scores else 0
    q_blocks = _query_blocks(queries, banks)
    best = RunningTopK(batch, k, largest=True, dtype=torch.float32, device=device)
    positives = RunningTopK(batch, n_pos, largest=True, dtype=torch.float32, device=device)
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        scores = _chunk_scores(q_blocks, banks, start, stop, exclusions)
        is_self, is_pos = _chunk_exclusions(exclusions, start, stop, device)
        excluded = is_self if is_pos is None else is_pos if is_self is None else is_self | is_pos
        best.add(scores, keep=None if excluded is None else ~excluded)
        if n_pos > 0:
            positives.add(scores, keep=_positive_mask(is_self, is_pos))
    return (*best.result(), *positives.result()) if return_positive_scores else best.result()


def _query_blocks(queries: Tensor, banks: list[tuple[Tensor, float]]) -> list[Tensor]:
    """The [B, D_i] float32 column block of ``queries`` that goes with each bank, in bank order."""
    blocks, offset = [], 0
    for rows, _ in banks:
        blocks.append(queries[:, offset : offset + rows.shape[1]].to(torch.float32))
        offset += rows.shape[1]
    return blocks


def _chunk_scores(
    q_blocks: list[Tensor], banks: list[tuple[Tensor, float]], start: int, stop: int, exclusions: Exclusions
) -> Tensor:
    """[B, stop − start] float32 scores of bank rows start..stop−1 (views of the banks, cast per chunk)."""
    scores = None
    for q, (rows, weight) in zip(q_blocks, banks, strict=True):
        term = weight * (q @ rows[start:stop].to(torch.float32).T)
        scores = term if scores is None else scores + term
    if exclusions.cams is not None:
        same_cam = exclusions.cams[0][:, None] == exclusions.cams[1][None, start:stop]
        scores = scores - exclusions.penalty * same_cam.to(torch.float32)
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(
            f"non-finite score for bank rows {start}..{stop - 1}: queries/bank must be finite and their "
            "products must fit in float32"
        )
    return scores


def _chunk_exclusions(
    exclusions: Exclusions, start: int, stop: int, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    """(is_self, is_positive): [B, stop − start] bool masks for bank rows start..stop−1, None when the
    exclusions hold no self index / no labels."""
    is_self = is_pos = None
    if exclusions.self_index is not None:
        is_self = exclusions.self_index[:, None] == torch.arange(start, stop, device=device)[None, :]
    if exclusions.labels is not None:
        is_pos = exclusions.labels[0][:, None] == exclusions.labels[1][None, start:stop]
    return is_self, is_pos


def _positive_mask(is_self: Tensor | None, is_pos: Tensor) -> Tensor:
    """[B, c] bool: label-positives other than the query's own row."""
    return is_pos if is_self is None else is_pos & ~is_self


def _max_positive_count(
    exclusions: Exclusions, batch: int, n_rows: int, chunk: int, device: torch.device
) -> int:
    """Largest number of label-positives (self excluded) of any query, counted chunk by chunk."""
    counts = torch.zeros(batch, dtype=torch.int64, device=device)
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        is_self, is_pos = _chunk_exclusions(exclusions, start, stop, device)
        counts += _positive_mask(is_self, is_pos).sum(dim=1)
    return int(counts.max()) if batch > 0 else 0
