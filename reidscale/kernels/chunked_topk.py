"""The exact top-k of each row of a matrix streamed in column chunks, ties broken by the lower column.

This is the one torch implementation of exact chunked top-k: the torch reference of ``bank_topk``
(largest scores, some bank rows excluded) and the torch backend of the neighbour search
(``reidscale.neighbours``, smallest distances) both rank with it. The full [B, N] matrix is never needed:
:class:`RunningTopK` reduces each [B, c] chunk to its best ``min(k, c)`` entries per row and merges them
into a running [B, k] list, so memory is O(B·(k + c)) and the result does not depend on the chunk size.

Order: by value, descending with ``largest=True`` and ascending otherwise, then by column ascending.
Values are compared with ``<``, ``>`` and ``==`` (so −0.0 ties +0.0) and must not be NaN. Entries a
caller leaves out (``keep`` False) are never returned. A row with fewer than k candidates is padded at its
end with (worst value, −1), the worst value being −inf with ``largest=True`` and +inf otherwise; a
candidate whose value is the worst value itself still ranks before the padding.

Selection in a chunk (:func:`best_of_chunk`): the row's k-th best value (``torch.topk``), every entry
strictly better than it, and the entries equal to it in column order until k are taken; no sort of the
chunk. Merge: the running list and the chunk's best are ordered by :func:`sort_by_score_then_index`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def worst_value(largest: bool) -> float:
    """The padding value: −inf when the largest values rank first, +inf when the smallest do."""
    return -math.inf if largest else math.inf


def sort_by_score_then_index(
    scores: Tensor, indices: Tensor, descending: bool = True
) -> tuple[Tensor, Tensor]:
    """Sort each row by (score, index ascending), entries with index −1 last as (worst value, −1).

    Args:
        scores: [B, M] float tensor (the scores of entries with index ≥ 0 must not be NaN).
        indices: [B, M] int64 tensor, −1 for an empty slot.
        descending: scores descending (padding −inf) or ascending (padding +inf).

    Returns:
        (scores [B, M], indices [B, M]) sorted; three stable sorts make the order lexicographic and
        independent of the input order.
    """
    order = torch.sort(indices, dim=1, stable=True).indices
    scores, indices = scores.gather(1, order), indices.gather(1, order)
    order = torch.sort(scores, dim=1, descending=descending, stable=True).indices
    scores, indices = scores.gather(1, order), indices.gather(1, order)
    order = torch.sort((indices >= 0).to(torch.int8), dim=1, descending=True, stable=True).indices
    scores, indices = scores.gather(1, order), indices.gather(1, order)
    empty = indices < 0
    return scores.masked_fill(empty, worst_value(descending)), indices


def best_of_chunk(
    values: Tensor, k: int, *, largest: bool, keep: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The best ``min(k, c)`` entries of each row of one chunk, in (value, column) order.

    Args:
        values: [B, c] floating, c ≥ 1 (no NaN).
        k: entries wanted per row, ≥ 1.
        largest: the largest values are the best (else the smallest).
        keep: [B, c] bool, False for entries that are not candidates; None keeps every entry.

    Returns:
        ``(values [B, w], columns [B, w] int64)`` with w = min(k, c), columns within the chunk; a row with
        fewer than w candidates ends with padding (worst value, −1).
    """
    width = min(k, values.shape[1])
    ranked = values if keep is None else values.masked_fill(~keep, worst_value(largest))
    kth = ranked.topk(width, dim=1, largest=largest, sorted=True).values[:, -1:]
    better = ranked > kth if largest else ranked < kth
    at_kth = ranked == kth
    if keep is not None:
        at_kth.logical_and_(keep)
    still_needed = width - better.sum(dim=1, keepdim=True)
    take = better.logical_or_(at_kth.logical_and_(at_kth.cumsum(dim=1) <= still_needed))
    if keep is None:  # every row takes exactly `width` entries; row-major: ascending columns within a row
        columns = take.nonzero()[:, 1].view(-1, width)
    else:  # a row may take fewer: each taken column goes to its rank among the row's taken ones
        slot = torch.where(take, take.cumsum(dim=1) - 1, width)  # the untaken go to a spare slot
        columns = torch.full((values.shape[0], width + 1), -1, dtype=torch.int64, device=values.device)
        all_columns = torch.arange(values.shape[1], device=values.device).expand_as(slot)
        columns = columns.scatter_(1, slot, all_columns)[:, :width]
    picked = values.gather(1, columns.clamp(min=0))
    if keep is not None:
        picked = picked.masked_fill(columns < 0, worst_value(largest))
    picked, order = picked.sort(dim=1, descending=largest, stable=True)
    return picked, columns.gather(1, order)


class RunningTopK:
    """The best k entries of each row of a [B, N] matrix whose columns arrive in chunks, left to right.

    ``add`` each [B, c] chunk in column order (columns 0..c−1 first, and so on); :meth:`result` gives
    ``(values [B, k], indices [B, k] int64)`` in the module's order, padded with (worst value, −1) where
    fewer than k candidates were seen (all padding before the first chunk).
    """

    def __init__(
        self, batch: int, k: int, *, largest: bool, dtype: torch.dtype, device: torch.device
    ) -> None:
        """Args: batch: B rows; k ≥ 0 entries kept per row; largest: the largest values rank first;
        dtype, device: of the values that will be added."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be an int >= 0, got {k!r}")
        self.k = k
        self.largest = largest
        self.columns_seen = 0
        self.values = torch.full((batch, k), worst_value(largest), dtype=dtype, device=device)
        self.indices = torch.full((batch, k), -1, dtype=torch.int64, device=device)

    def add(self, values: Tensor, keep: Tensor | None = None) -> None:
        """Merge the next chunk: values [B, c] of columns ``columns_seen .. columns_seen + c − 1``.

        ``keep``: [B, c] bool, False for entries that are not candidates (None: all are).
        """
        start, self.columns_seen = self.columns_seen, self.columns_seen + values.shape[1]
        if self.k == 0 or values.shape[1] == 0:
            return
        chunk_values, columns = best_of_chunk(values, self.k, largest=self.largest, keep=keep)
        ids = torch.where(columns >= 0, columns + start, -1)
        merged_values, merged_ids = sort_by_score_then_index(
            torch.cat([self.values, chunk_values], dim=1),
            torch.cat([self.indices, ids], dim=1),
            descending=self.largest,
        )
        self.values, self.indices = (
            merged_values[:, : self.k].contiguous(),
            merged_ids[:, : self.k].contiguous(),
        )

    def result(self) -> tuple[Tensor, Tensor]:
        """``(values [B, k], indices [B, k] int64)``: the best k so far, in order, padded."""
        return self.values, self.indices
