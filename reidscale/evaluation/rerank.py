"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
CVPR 2017) computed sparsely, so that no N×N matrix is ever built (N = Q + G, query and gallery pooled).

The result is the one of the authors' dense code (k1=20, k2=6, λ=0.3 by default):

- nd[i, j] = d[i, j] / max_k d[i, k], d = ``pairwise_distance`` (cosine, or squared Euclidean);
- R(i, k) = {j in the first k+1 neighbours of i : i in the first k+1 neighbours of j} (self included,
  ties broken by the lower index);
- each candidate c of R(i, k1) whose R(c, round(k1/2)) shares more than 2/3 of its items with R(i, k1)
  adds R(c, round(k1/2)) to the set (``round`` rounds half to even, as ``np.around`` did);
- V[i, j] = exp(−nd[i, j]) normalised over that set; with k2 > 1, V[i] ← mean of V over the first k2
  neighbours of i; Jaccard distance jd = 1 − m / (2 − m), m = Σ_k min(V[i, k], V[j, k]);
- final[q, g] = (1 − λ)·jd[q, g] + λ·nd[q, g].

How it stays sparse: neighbour lists come from ``knn_search`` (k = k1+1); the row maxima from a chunked
pass over the features; every distance that enters a weight is recomputed from the two feature rows (one
formula for all weights, cost nnz·D); V is held in CSR form (row pointers, columns, values); the Jaccard
sums walk an inverted (column) index of the gallery rows of V, touching only pairs that share support.
V is stored in float32 where the original code used float16, so our values are the more precise ones.
Memory is O(N·nnz_row) for V (a few hundred entries a row at k1=20, k2=6) plus chunk-sized temporaries.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from reidscale.neighbours import knn_search
from reidscale.neighbours.distance import check_metric, l2_normalize, pairwise_distance

# Upper bound on the elements of one vectorised temporary (gathers, comparisons, expanded pair lists).
_BLOCK_ELEMENTS = 1 << 22


def _check_inputs(
    query_feats: Tensor, gallery_feats: Tensor, k1: int, k2: int, lambda_value: float, query_chunk: int
) -> None:
    for name, feats in (("query_feats", query_feats), ("gallery_feats", gallery_feats)):
        if not isinstance(feats, Tensor) or feats.dim() != 2 or not feats.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor of shape [rows, D]")
        if feats.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one row, got shape {tuple(feats.shape)}")
        if not bool(torch.isfinite(feats).all()):
            raise ValueError(f"{name} holds NaN or infinite values")
    if query_feats.shape[1] != gallery_feats.shape[1] or query_feats.device != gallery_feats.device:
        raise ValueError(
            f"query_feats {tuple(query_feats.shape)} on {query_feats.device} and gallery_feats "
            f"{tuple(gallery_feats.shape)} on {gallery_feats.device} need the same D and device"
        )
    for name, value in (("k1", k1), ("k2", k2), ("query_chunk", query_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if k2 > k1 + 1:
        raise ValueError(f"k2 must be at most k1 + 1 = {k1 + 1} (it averages over k1+1 neighbours), got {k2}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must lie in [0, 1], got {lambda_value!r}")
    num_items = query_feats.shape[0] + gallery_feats.shape[0]
    if num_items < k1 + 1:
        raise ValueError(f"k1 = {k1} needs at least k1 + 1 = {k1 + 1} query + gallery items, got {num_items}")


def _row_maxima(feats: Tensor, metric: str) -> Tensor:
    """max_k d[i, k] over all N items. feats: [N, D] → [N].

    d is symmetric, so only the square blocks on and above the diagonal are computed (half the FLOPs);
    each block updates the maxima of its rows and of its columns.
    """
    num_items = feats.shape[0]
    side = max(1, math.isqrt(_BLOCK_ELEMENTS))
    maxima = torch.full((num_items,), -math.inf, dtype=feats.dtype, device=feats.device)
    for row_start in range(0, num_items, side):
        row_stop = min(row_start + side, num_items)
        for col_start in range(row_start, num_items, side):
            col_stop = min(col_start + side, num_items)
            block = pairwise_distance(feats[row_start:row_stop], feats[col_start:col_stop], metric)
            maxima[row_start:row_stop] = torch.maximum(maxima[row_start:row_stop], block.amax(dim=1))
            maxima[col_start:col_stop] = torch.maximum(maxima[col_start:col_stop], block.amax(dim=0))
    # A row whose distances are all zero (every item identical) gets nd = 0 instead of 0/0.
    return maxima.clamp_min_(torch.finfo(feats.dtype).tiny)


def _pair_distances(metric_feats: Tensor, rows: Tensor, cols: Tensor, metric: str) -> Tensor:
    """d[rows[p], cols[p]] for each pair p. metric_feats: [N, D], already L2-normalised for cosine → [P]."""
    pairs_per_block = max(1, _BLOCK_ELEMENTS // metric_feats.shape[1])
    out = torch.empty(rows.numel(), dtype=metric_feats.dtype, device=metric_feats.device)
    for start in range(0, rows.numel(), pairs_per_block):
        left = metric_feats[rows[start : start + pairs_per_block]]
        right = metric_feats[cols[start : start + pairs_per_block]]
        if metric == "cosine":
            out[start : start + pairs_per_block] = 1.0 - (left * right).sum(dim=1)
        else:
            out[start : start + pairs_per_block] = (left - right).square().sum(dim=1)
    return out


def _reciprocal_masks(neighbours: Tensor, half_k: int) -> tuple[Tensor, Tensor]:
    """Which listed neighbours are k-reciprocal.

    neighbours: [N, K] (K = k1+1) → (in_r_full [N, K]: neighbours[i, a] ∈ R(i, k1),
    in_r_half [N, H]: neighbours[i, a] ∈ R(i, half_k), H = half_k + 1 ≤ K).
    """
    num_items, width = neighbours.shape
    half_width = half_k + 1
    in_r_full = torch.empty(num_items, width, dtype=torch.bool, device=neighbours.device)
    in_r_half = torch.empty(num_items, half_width, dtype=torch.bool, device=neighbours.device)
    rows_per_block = max(1, _BLOCK_ELEMENTS // (width * width))
    for start in range(0, num_items, rows_per_block):
        forward = neighbours[start : start + rows_per_block]
        own_index = torch.arange(start, start + forward.shape[0], device=neighbours.device)
        # points_back[i, a, b]: the b-th neighbour of i's a-th neighbour is i itself
        points_back = neighbours[forward] == own_index[:, None, None]
        in_r_full[start : start + forward.shape[0]] = points_back.any(dim=2)
        in_r_half[start : start + forward.shape[0]] = points_back[:, :half_width, :half_width].any(dim=2)
    return in_r_full, in_r_half


def _expanded_support(neighbours: Tensor, in_r_full: Tensor, in_r_half: Tensor) -> tuple[Tensor, Tensor]:
    """The expanded k-reciprocal set of every item as sorted, duplicate-free (row, column) pairs.

    neighbours: [N, K], in_r_full: [N, K], in_r_half: [N, H] → (rows [P], cols [P]) int64, sorted by row
    then column.
    """
    num_items, width = neighbours.shape
    half_width = in_r_half.shape[1]
    row_blocks, col_blocks = [], []
    rows_per_block = max(1, _BLOCK_ELEMENTS // (width * (half_width + 1)))
    for start in range(0, num_items, rows_per_block):
        forward = neighbours[start : start + rows_per_block]  # [c, K]; candidate c = forward[i, a]
        is_member = in_r_full[start : start + rows_per_block]
        # R(i, k1) sorted, padded with N (never an item) so that membership is one batched binary search
        members = torch.where(is_member, forward, num_items).sort(dim=1).values
        candidate_sets = neighbours[:, :half_width][forward]  # [c, K, H]: lists of each candidate
        candidate_valid = in_r_half[forward]  # [c, K, H]: R(candidate, k1/2)
        flat_sets = candidate_sets.flatten(1)
        found_at = torch.searchsorted(members, flat_sets).clamp_max_(width - 1)
        shared = (members.gather(1, found_at) == flat_sets).view_as(candidate_sets) & candidate_valid
        # |R(c, k1/2) ∩ R(i, k1)| > 2/3 |R(c, k1/2)|, in integers (equal to the float test of the original)
        accepted = is_member & (3 * shared.sum(dim=2) > 2 * candidate_valid.sum(dim=2))
        slot_valid = torch.cat([is_member, (accepted[..., None] & candidate_valid).flatten(1)], dim=1)
        slots = torch.where(slot_valid, torch.cat([forward, flat_sets], dim=1), num_items).sort(dim=1).values
        keep = slots < num_items
        keep[:, 1:] &= slots[:, 1:] != slots[:, :-1]
        own_index = torch.arange(start, start + forward.shape[0], device=neighbours.device)
        row_blocks.append(own_index[:, None].expand_as(slots)[keep])
        col_blocks.append(slots[keep])
    return torch.cat(row_blocks), torch.cat(col_blocks)


def _row_pointers(rows: Tensor, num_rows: int) -> Tensor:
    """CSR row pointers [num_rows + 1] for row ids [P] sorted ascending."""
    counts = torch.bincount(rows, minlength=num_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _gather_segments(pointers: Tensor, segment_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenated positions of the segments ``segment_ids`` [S] of a CSR layout with ``pointers``.

    → (positions [T], segment_of_position [T] with values in 0..S-1).
    """
    starts = pointers[segment_ids]
    lengths = pointers[segment_ids + 1] - starts
    segment_of_position = torch.repeat_interleave(
        torch.arange(len(segment_ids), device=starts.device), lengths
    )
    first_position = torch.cumsum(lengths, 0) - lengths
    offsets = (
        torch.arange(segment_of_position.numel(), device=starts.device) - first_position[segment_of_position]
    )
    return starts[segment_of_position] + offsets, segment_of_position


def _local_query_expansion(
    pointers: Tensor, cols: Tensor, values: Tensor, neighbours: Tensor, k2: int
) -> tuple[Tensor, Tensor, Tensor]:
    """V[i] ← mean of V[neighbours[i, :k2]] in CSR form. pointers: [N+1], cols/values: [P] → same layout."""
    num_items = neighbours.shape[0]
    longest_row = int((pointers[1:] - pointers[:-1]).max())
    rows_per_block = max(1, _BLOCK_ELEMENTS // (k2 * max(longest_row, 1)))
    row_blocks, col_blocks, value_blocks = [], [], []
    for start in range(0, num_items, rows_per_block):
        sources = neighbours[start : start + rows_per_block, :k2].reshape(-1)
        positions, source_slot = _gather_segments(pointers, sources)
        target_rows = start + torch.div(source_slot, k2, rounding_mode="floor")
        keys, inverse = torch.unique(
            target_rows * num_items + cols[positions], sorted=True, return_inverse=True
        )
        summed = torch.zeros(keys.numel(), dtype=values.dtype, device=values.device)
        summed.index_add_(0, inverse, values[positions])
        row_blocks.append(keys // num_items)
        col_blocks.append(keys % num_items)
        value_blocks.append(summed / k2)
    return _row_pointers(torch.cat(row_blocks), num_items), torch.cat(col_blocks), torch.cat(value_blocks)


def _gallery_inverted_index(
    pointers: Tensor, cols: Tensor, values: Tensor, num_query: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Gallery rows of V, column-major → (column pointers [N+1], gallery rows [P_g], values [P_g])."""
    num_items = pointers.numel() - 1
    rows = torch.repeat_interleave(torch.arange(num_items, device=cols.device), pointers[1:] - pointers[:-1])
    from_gallery = rows >= num_query
    gallery_cols = cols[from_gallery]
    order = torch.argsort(gallery_cols, stable=True)
    col_pointers = _row_pointers(gallery_cols[order], num_items)
    return col_pointers, rows[from_gallery][order] - num_query, values[from_gallery][order]


def _min_overlap(
    pointers: Tensor,
    cols: Tensor,
    values: Tensor,
    inverted: tuple[Tensor, Tensor, Tensor],
    row_range: tuple[int, int],
    num_gallery: int,
) -> Tensor:
    """m[q, g] = Σ_k min(V[q, k], V[g, k]) for query rows q in row_range → [rows, G] (0 where disjoint)."""
    col_pointers, gallery_rows, gallery_values = inverted
    start, stop = row_range
    first, last = int(pointers[start]), int(pointers[stop])
    entry_cols, entry_values = cols[first:last], values[first:last]
    entry_rows = torch.repeat_interleave(
        torch.arange(stop - start, device=cols.device), pointers[start + 1 : stop + 1] - pointers[start:stop]
    )
    fan_out_total = torch.cumsum(col_pointers[entry_cols + 1] - col_pointers[entry_cols], 0)
    overlap = torch.zeros((stop - start) * num_gallery, dtype=values.dtype, device=values.device)
    entry = 0
    while entry < entry_cols.numel():
        done_before = int(fan_out_total[entry - 1]) if entry > 0 else 0
        block_end = int(torch.searchsorted(fan_out_total, done_before + _BLOCK_ELEMENTS, right=True))
        block_end = max(block_end, entry + 1)
        positions, entry_of = _gather_segments(col_pointers, entry_cols[entry:block_end])
        smaller = torch.minimum(entry_values[entry:block_end][entry_of], gallery_values[positions])
        targets = entry_rows[entry:block_end][entry_of] * num_gallery + gallery_rows[positions]
        overlap.index_add_(0, targets, smaller)
        entry = block_end
    return overlap.view(stop - start, num_gallery)


def _sparse_reciprocal_weights(
    feats: Tensor, metric: str, k1: int, k2: int, knn_backend: str, row_maxima: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """V after local query expansion, in CSR form. feats: [N, D] → (pointers [N+1], cols [P], values [P])."""
    num_items = feats.shape[0]
    _, neighbours = knn_search(feats, feats, k=k1 + 1, metric=metric, backend=knn_backend)
    neighbours = neighbours.to(device=feats.device, dtype=torch.int64)
    in_r_full, in_r_half = _reciprocal_masks(neighbours, half_k=round(k1 / 2))
    rows, cols = _expanded_support(neighbours, in_r_full, in_r_half)
    metric_feats = l2_normalize(feats) if metric == "cosine" else feats
    weights = torch.exp(-_pair_distances(metric_feats, rows, cols, metric) / row_maxima[rows])
    row_sums = torch.zeros(num_items, dtype=weights.dtype, device=weights.device).index_add_(0, rows, weights)
    pointers, values = _row_pointers(rows, num_items), weights / row_sums[rows]
    if k2 == 1:
        return pointers, cols, values
    return _local_query_expansion(pointers, cols, values, neighbours, k2)


def rerank_distance_chunks(
    query_feats: Tensor,
    gallery_feats: Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: str = "euclidean",
    query_chunk: int = 256,
    knn_backend: str = "auto",
) -> Iterator[tuple[int, Tensor]]:
    """Re-ranked distances, one chunk of query rows at a time.

    query_feats: [Q, D], gallery_feats: [G, D] (computed in float32 on their device) → yields
    (start_row, final [c, G] float32) for consecutive chunks of ``query_chunk`` rows (the last may be
    shorter). Arguments are checked at call time; the sparse structures are built at the first ``next``.
    Exact ties (duplicate features) follow the lower-index rule of the dense code: ``knn_search`` breaks
    them that way on every backend.
    """
    check_metric(metric)
    _check_inputs(query_feats, gallery_feats, k1, k2, lambda_value, query_chunk)
    return _generate_chunks(
        query_feats, gallery_feats, k1, k2, float(lambda_value), metric, query_chunk, knn_backend
    )


def _generate_chunks(
    query_feats: Tensor,
    gallery_feats: Tensor,
    k1: int,
    k2: int,
    lambda_value: float,
    metric: str,
    query_chunk: int,
    knn_backend: str,
) -> Iterator[tuple[int, Tensor]]:
    num_query, num_gallery = query_feats.shape[0], gallery_feats.shape[0]
    feats = torch.cat([query_feats, gallery_feats]).float()
    row_maxima = _row_maxima(feats, metric)
    pointers, cols, values = _sparse_reciprocal_weights(feats, metric, k1, k2, knn_backend, row_maxima)
    inverted = _gallery_inverted_index(pointers, cols, values, num_query)
    for start in range(0, num_query, query_chunk):
        stop = min(start + query_chunk, num_query)
        overlap = _min_overlap(pointers, cols, values, inverted, (start, stop), num_gallery)
        jaccard = 1.0 - overlap / (2.0 - overlap)
        original = (
            pairwise_distance(feats[start:stop], feats[num_query:], metric) / row_maxima[start:stop, None]
        )
        yield start, (1.0 - lambda_value) * jaccard + lambda_value * original


def rerank_distances(query_feats: Tensor, gallery_feats: Tensor, **kwargs) -> Tensor:
    """All re-ranked distances at once (small inputs): [Q, D], [G, D] → [Q, G]; keywords as
    ``rerank_distance_chunks``."""
    return torch.cat([chunk for _, chunk in rerank_distance_chunks(query_feats, gallery_feats, **kwargs)])
