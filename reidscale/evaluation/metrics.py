"""ReID rank metrics (mAP, mINP, CMC), exact and chunked, with the semantics of torchreid's eval_market1501.

Protocol, per query:

* gallery items with the query's pid AND camera are removed (same-camera views of the same person);
  everything else stays, distractors (pid 0) included: they are ordinary items that never match;
* a query with no remaining gallery item of its pid is skipped and counted in ``num_skipped_queries``;
* the remaining gallery is ranked by distance ascending, **ties broken by gallery index** (the order of a
  stable sort), so results are deterministic and equal to ``np.argsort(row, kind="stable")``;
* AP = mean over the correct items of the precision at their rank (non-interpolated);
  INP = #correct / rank of the hardest (last) correct item;
  CMC[j] = 1 when the first correct item is at rank <= j + 1.

mAP, mINP and every CMC entry are means over the valid queries. ``cmc`` always has ``max_rank`` entries: a
ranked list shorter than ``max_rank`` has its cumulative curve padded with its last value (1, since a valid
query has a match). NaN distances are rejected; ±inf are ranked like any other value.

How it is computed, without sorting the gallery: AP, INP and CMC depend only on the ranks of a query's
positives (same pid, other camera). Per chunk of queries, each row's distances are cut into bins on a linear
grid from the row minimum to its hardest positive (a monotone map: a lower bin means strictly closer), a
per-row histogram of the valid items gives, by cumulative sum, how many items lie in bins below each
positive, and only the few items that share a bin with a positive are sorted exactly by (distance, gallery
index). Exact for every float dtype, O(chunk x G) elementwise work, working memory bounded by the chunk
(``UPDATE_BYTES_PER_ENTRY`` per query x gallery entry; ``query_chunk_size`` sizes chunks from a budget).
With massively tied distances (integer-valued) most items share a bin with a positive: still exact, slower.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from reidscale.neighbours.distance import check_metric, distance_chunks

#: average gallery items per bin of the distance grid (fewer bins: smaller histogram, more exact sorting)
GALLERY_ITEMS_PER_BIN = 4
#: upper bound on the bins per row (float32 represents every bin number exactly)
MAX_DISTANCE_BINS = 2**22
#: working bytes per (query, gallery) entry of a chunk: the float32 distances, update's scratch buffers
#: (float 4 + int64 8 + bool 1 + histogram 2) and headroom; benchmarks/bench_eval.py measures the real peak.
UPDATE_BYTES_PER_ENTRY = 24

LabelsLike = torch.Tensor | np.ndarray | Sequence[int]


@dataclass
class RankMetrics:
    """Averages over the valid queries; all values are fractions in [0, 1]."""

    mAP: float  # noqa: N815 (the names every ReID paper uses)
    mINP: float  # noqa: N815
    cmc: list[float]  # length max_rank, cmc[0] = rank-1
    num_valid_queries: int
    num_skipped_queries: int

    def to_dict(self) -> dict:
        """Plain dict with keys mAP, mINP, cmc, num_valid_queries, num_skipped_queries."""
        return asdict(self)


def as_label_tensor(labels: LabelsLike, name: str) -> torch.Tensor:
    """1-D int64 tensor from a tensor/array/sequence of integers; ValueError naming ``name`` otherwise."""
    tensor = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of integer labels, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got dtype {tensor.dtype}")
    return tensor.to(torch.int64)


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def query_chunk_size(num_gallery: int, memory_budget_mb: int = 1024, bytes_per_entry: int = 24) -> int:
    """Rows per chunk so that chunk x num_gallery x bytes_per_entry fits the budget (at least 1)."""
    _check_positive_int(num_gallery, "num_gallery")
    _check_positive_int(memory_budget_mb, "memory_budget_mb")
    _check_positive_int(bytes_per_entry, "bytes_per_entry")
    return max(1, (memory_budget_mb * 2**20) // (num_gallery * bytes_per_entry))


def check_distances(distances: torch.Tensor, num_queries: int, num_gallery: int) -> None:
    """ValueError unless ``distances`` is a floating-point tensor [num_queries, num_gallery]."""
    if not isinstance(distances, torch.Tensor):
        raise ValueError(f"distances must be a torch.Tensor, got {type(distances).__name__}")
    if distances.dim() != 2 or distances.shape[1] != num_gallery:
        raise ValueError(
            f"distances must be [num_queries, {num_gallery}] (one column per gallery item), "
            f"got shape {tuple(distances.shape)}"
        )
    if not distances.is_floating_point():
        raise ValueError(f"distances must be a floating-point tensor, got dtype {distances.dtype}")
    if distances.shape[0] != num_queries:
        raise ValueError(
            f"query_pids/query_camids have {num_queries} entries but distances has {distances.shape[0]} rows"
        )


def _label_pair(pids: LabelsLike, camids: LabelsLike, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(pids, camids) as int64 [N] tensors of equal length; errors name ``<prefix>_pids`` etc."""
    pids, camids = as_label_tensor(pids, f"{prefix}_pids"), as_label_tensor(camids, f"{prefix}_camids")
    if pids.numel() != camids.numel():
        raise ValueError(
            f"{prefix}_pids and {prefix}_camids must have the same length, "
            f"got {pids.numel()} and {camids.numel()}"
        )
    return pids, camids


class RankMetricAccumulator:
    """Accumulates per-query AP / INP / first-hit rank over chunks of queries against one fixed gallery.

    gallery_pids, gallery_camids: [G] integer labels. Sums are kept in float64 on the device of the
    distances given to ``update``. Scratch buffers sized by the largest chunk are reused between updates
    (fresh large allocations cost more than the arithmetic) and released by ``compute``.
    """

    def __init__(self, gallery_pids: LabelsLike, gallery_camids: LabelsLike, max_rank: int = 50) -> None:
        self.gallery_pids, self.gallery_camids = _label_pair(gallery_pids, gallery_camids, "gallery")
        if self.gallery_pids.numel() == 0:
            raise ValueError("gallery_pids is empty: the gallery needs at least one item")
        _check_positive_int(max_rank, "max_rank")
        self.max_rank = max_rank
        self.num_gallery = self.gallery_pids.numel()
        self.num_bins = min(max(self.num_gallery // GALLERY_ITEMS_PER_BIN, 1), MAX_DISTANCE_BINS)
        self._device: torch.device | None = None
        self._scratch_buffers: dict[str, torch.Tensor] = {}
        self._num_skipped = 0

    def _bind_device(self, device: torch.device) -> None:
        """Move the gallery labels (also sorted by pid, to gather positives) and the sums to ``device``."""
        if self._device == device:
            return
        if self._device is not None:
            raise ValueError(f"distances must stay on {self._device} across update calls, got {device}")
        self._device = device
        self._pids, self._camids = self.gallery_pids.to(device), self.gallery_camids.to(device)
        self._pid_order = torch.sort(self._pids, stable=True).indices  # within a pid: ascending index
        self._sorted_pids = self._pids[self._pid_order]
        self._ap_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._inp_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._num_valid = torch.zeros((), dtype=torch.int64, device=device)
        # entry r counts first hits at rank r + 1; the last entry collects ranks beyond max_rank
        self._first_hit_counts = torch.zeros(self.max_rank + 1, dtype=torch.int64, device=device)

    def _scratch(self, name: str, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """A reusable buffer of ``shape`` (uninitialised)."""
        numel = math.prod(shape)
        buffer = self._scratch_buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype:
            self._scratch_buffers.pop(name, None)
            buffer = self._scratch_buffers[name] = torch.empty(numel, dtype=dtype, device=self._device)
        return buffer[:numel].view(shape)

    def update(self, distances: torch.Tensor, query_pids: LabelsLike, query_camids: LabelsLike) -> None:
        """Add a chunk of queries. distances: [c, G] (smaller = closer); query_pids, query_camids: [c]."""
        query_pids, query_camids = _label_pair(query_pids, query_camids, "query")
        check_distances(distances, query_pids.numel(), self.num_gallery)
        if distances.shape[0] == 0:
            return
        self._bind_device(distances.device)
        if distances.dtype in (torch.float16, torch.bfloat16):
            distances = distances.float()  # exact: same order and ties
        distances = distances.contiguous()
        query_pids, query_camids = query_pids.to(distances.device), query_camids.to(distances.device)

        ranks, num_positives = self._positive_ranks(distances, query_pids, query_camids)
        valid = num_positives > 0
        self._num_skipped += int((~valid).sum())
        ranks, counts = ranks[valid].double(), num_positives[valid]
        if ranks.numel() == 0:
            return
        hit_number = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
        precision_at_hits = torch.where(hit_number <= counts.unsqueeze(1), hit_number / ranks, 0.0)
        self._ap_sum += (precision_at_hits.sum(dim=1) / counts).sum()
        hardest_rank = ranks.gather(1, (counts - 1).unsqueeze(1)).squeeze(1)
        self._inp_sum += (counts / hardest_rank).sum()
        first_hit_bin = (ranks[:, 0].long() - 1).clamp_max(self.max_rank)
        self._first_hit_counts += torch.bincount(first_hit_bin, minlength=self.max_rank + 1)
        self._num_valid += ranks.shape[0]

    def _gather_positives(
        self, distances: torch.Tensor, query_pids: torch.Tensor, query_camids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Positives of each row sorted by (distance, gallery index), padded at the end, and the junk items.

        Returns distances [c, P] (padding +inf), gallery indices [c, P] (padding G), counts [c] and the
        (row, gallery index) pairs [J] of the items removed from the ranking (same pid, same camera).
        """
        start = torch.searchsorted(self._sorted_pids, query_pids)
        stop = torch.searchsorted(self._sorted_pids, query_pids, right=True)
        width = max(int((stop - start).max()), 1)
        slot = start.unsqueeze(1) + torch.arange(width, device=distances.device)
        in_pid = slot < stop.unsqueeze(1)
        candidate = self._pid_order[slot.clamp_max(self.num_gallery - 1)]
        same_camera = self._camids[candidate] == query_camids.unsqueeze(1)
        is_positive = in_pid & ~same_camera
        junk_row, junk_slot = (in_pid & same_camera).nonzero(as_tuple=True)
        index = torch.where(is_positive, candidate, self.num_gallery)
        index = index.sort(dim=1, stable=True).values  # positives first, ascending gallery index
        dist = distances.gather(1, index.clamp_max(self.num_gallery - 1))
        dist = dist.masked_fill(index == self.num_gallery, float("inf"))
        dist, order = dist.sort(dim=1, stable=True)  # stable: equal distances keep index order
        junk = (junk_row, candidate[junk_row, junk_slot])
        return dist, index.gather(1, order), is_positive.sum(dim=1), junk

    def _positive_ranks(
        self, distances: torch.Tensor, query_pids: torch.Tensor, query_camids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """1-based ranks [c, P] of each row's positives in ascending order (padding: garbage), counts [c].

        rank = 1 + #valid items in lower distance bins + #valid items of its bin ordered before it.
        """
        pos_dist, pos_index, num_positives, junk = self._gather_positives(distances, query_pids, query_camids)
        num_rows, width = pos_dist.shape
        hardest = pos_dist.gather(1, (num_positives - 1).clamp_min(0).unsqueeze(1))
        row_min = distances.amin(dim=1, keepdim=True)
        if torch.isnan(row_min).any():
            raise ValueError("distances contain NaN; the ranking is undefined")
        hardest = torch.where(num_positives.unsqueeze(1) > 0, hardest, row_min)
        bins = self._distance_bins(distances, row_min, hardest)
        bins[junk] = self.num_bins  # removed items join the overflow bin, which no positive reads
        in_layout = torch.arange(width, device=bins.device) < num_positives.unsqueeze(1)
        pos_bin = bins.gather(1, pos_index.clamp_max(self.num_gallery - 1))
        pos_bin.masked_fill_(~in_layout, self.num_bins)

        items_to_bin = self._scratch("histogram", (num_rows, self.num_bins + 1), torch.int64).zero_()
        ones = torch.ones((1, 1), dtype=torch.int64, device=bins.device).expand_as(bins)
        items_to_bin.scatter_add_(1, bins, ones).cumsum_(dim=1)
        in_lower_bins = items_to_bin.gather(1, (pos_bin - 1).clamp_min(0)).masked_fill_(pos_bin == 0, 0)
        same_bin_before = self._count_same_bin_before(
            distances, bins, pos_bin, in_layout, query_pids, query_camids
        )
        return 1 + in_lower_bins + same_bin_before, num_positives

    def _distance_bins(
        self, distances: torch.Tensor, lowest: torch.Tensor, hardest: torch.Tensor
    ) -> torch.Tensor:
        """Bin [c, G] int64 of each distance on a per-row linear grid from lowest to hardest (both [c, 1]).

        The map is monotone (IEEE subtraction, multiplication, clamping and truncation are), so an item in a
        lower bin is strictly closer than any item in a higher bin. Distances above ``hardest`` go to the
        overflow bin ``num_bins``. ±inf is handled as ±float max, which keeps the map monotone.
        """
        limit = torch.finfo(distances.dtype).max
        if bool((lowest < -limit).any() or (hardest > limit).any() or (distances.amax() > limit)):
            distances = distances.clamp(-limit, limit)
            lowest, hardest = lowest.clamp(-limit, limit), hardest.clamp(-limit, limit)
        span = hardest - lowest
        scale = (self.num_bins - 1) / span
        scale = torch.where((span > 0) & torch.isfinite(scale), scale, torch.zeros_like(scale))
        scaled = torch.sub(distances, lowest, out=self._scratch("scaled", distances.shape, distances.dtype))
        scaled.mul_(scale)
        if bool((scale == 0).any()):
            scaled.nan_to_num_(nan=0.0)  # inf * 0 where the grid collapsed: those rows use bin 0 only
        scaled.clamp_(max=self.num_bins - 1)
        bins = self._scratch("bins", distances.shape, torch.int64).copy_(scaled)  # truncates: floor of >= 0
        above = torch.gt(distances, hardest, out=self._scratch("flags", distances.shape, torch.bool))
        return bins.masked_fill_(above, self.num_bins)

    def _count_same_bin_before(
        self,
        distances: torch.Tensor,
        bins: torch.Tensor,
        pos_bin: torch.Tensor,
        in_layout: torch.Tensor,
        query_pids: torch.Tensor,
        query_camids: torch.Tensor,
    ) -> torch.Tensor:
        """[c, P]: valid items that share a positive's bin and come before it by (distance, gallery index).

        Only items in bins holding a positive take part (about GALLERY_ITEMS_PER_BIN per positive for
        continuous distances): sorted by (row, bin, distance, gallery index), a positive's offset in its
        (row, bin) run is the count.
        """
        num_rows, num_gallery = bins.shape
        has_positive = self._scratch("has_positive", (num_rows, self.num_bins + 1), torch.bool).zero_()
        has_positive.scatter_(1, pos_bin, in_layout)  # padding writes False to the overflow bin
        is_candidate = torch.gather(has_positive, 1, bins, out=self._scratch("flags", bins.shape, torch.bool))
        candidate = is_candidate.view(-1).nonzero().squeeze(1)  # row * G + gallery index, ascending
        row = candidate // num_gallery
        run = row * (self.num_bins + 1) + bins.view(-1)[candidate]
        order = distances.view(-1)[candidate].sort(stable=True).indices
        order = order[run[order].sort(stable=True).indices]
        candidate, row, run = candidate[order], row[order], run[order]
        run_start = torch.searchsorted(run, run)
        offset_in_run = torch.arange(candidate.numel(), device=candidate.device) - run_start
        index = candidate - row * num_gallery
        is_positive = (self._pids[index] == query_pids[row]) & (self._camids[index] != query_camids[row])
        same_bin_before = torch.zeros(in_layout.shape, dtype=torch.int64, device=in_layout.device)
        same_bin_before[in_layout] = offset_in_run[is_positive]  # positives come in row-major order
        return same_bin_before

    def compute(self) -> RankMetrics:
        """Metrics over all queries so far; frees the scratch buffers. ValueError if no query was valid."""
        self._scratch_buffers.clear()
        num_valid = 0 if self._device is None else int(self._num_valid)
        if num_valid == 0:
            raise ValueError(
                f"no valid query: all {self._num_skipped} queries lacked a gallery item with the same pid "
                "from another camera (or update was never called), so mAP/CMC are undefined"
            )
        cmc = self._first_hit_counts[: self.max_rank].cumsum(0).double() / num_valid
        return RankMetrics(
            mAP=float(self._ap_sum) / num_valid,
            mINP=float(self._inp_sum) / num_valid,
            cmc=cmc.cpu().tolist(),
            num_valid_queries=num_valid,
            num_skipped_queries=self._num_skipped,
        )


def _resolve_chunk(query_chunk: int | None, num_gallery: int, memory_budget_mb: int) -> int:
    if query_chunk is None:
        return query_chunk_size(num_gallery, memory_budget_mb, UPDATE_BYTES_PER_ENTRY)
    _check_positive_int(query_chunk, "query_chunk")
    return query_chunk


def evaluate_distances(
    distmat: torch.Tensor,
    query_pids: LabelsLike,
    query_camids: LabelsLike,
    gallery_pids: LabelsLike,
    gallery_camids: LabelsLike,
    max_rank: int = 50,
    query_chunk: int | None = None,
    memory_budget_mb: int = 1024,
) -> RankMetrics:
    """Rank metrics of a precomputed distance matrix. distmat: [Q, G] (tensor or ndarray); labels [Q], [G]."""
    if isinstance(distmat, np.ndarray):
        distmat = torch.from_numpy(distmat)
    accumulator = RankMetricAccumulator(gallery_pids, gallery_camids, max_rank)
    query_pids, query_camids = _label_pair(query_pids, query_camids, "query")
    check_distances(distmat, query_pids.numel(), accumulator.num_gallery)
    chunk = _resolve_chunk(query_chunk, accumulator.num_gallery, memory_budget_mb)
    for begin in range(0, distmat.shape[0], chunk):
        rows = slice(begin, begin + chunk)
        accumulator.update(distmat[rows], query_pids[rows], query_camids[rows])
    return accumulator.compute()


def evaluate_features(
    query_feats: torch.Tensor,
    gallery_feats: torch.Tensor,
    query_pids: LabelsLike,
    query_camids: LabelsLike,
    gallery_pids: LabelsLike,
    gallery_camids: LabelsLike,
    metric: str = "cosine",
    max_rank: int = 50,
    query_chunk: int | None = None,
    memory_budget_mb: int = 1024,
) -> RankMetrics:
    """Rank metrics of embeddings: query_feats [Q, D], gallery_feats [G, D]; labels [Q] and [G].

    Distances are computed chunk by chunk with ``pairwise_distance`` on the features' device and dtype;
    the full [Q, G] matrix never exists.
    """
    check_metric(metric)
    accumulator = RankMetricAccumulator(gallery_pids, gallery_camids, max_rank)
    query_pids, query_camids = _label_pair(query_pids, query_camids, "query")
    _check_feature_matrix(query_feats, "query_feats", query_pids.numel())
    _check_feature_matrix(gallery_feats, "gallery_feats", accumulator.num_gallery)
    if query_feats.shape[1] != gallery_feats.shape[1] or query_feats.device != gallery_feats.device:
        raise ValueError(
            f"query_feats and gallery_feats must share D and device, got {tuple(query_feats.shape)} on "
            f"{query_feats.device} and {tuple(gallery_feats.shape)} on {gallery_feats.device}"
        )
    chunk = _resolve_chunk(query_chunk, accumulator.num_gallery, memory_budget_mb)
    for begin, distances in distance_chunks(query_feats, gallery_feats, metric, chunk):
        rows = slice(begin, begin + distances.shape[0])
        accumulator.update(distances, query_pids[rows], query_camids[rows])
        del distances
    return accumulator.compute()


def _check_feature_matrix(feats: torch.Tensor, name: str, num_labels: int) -> None:
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or not feats.is_floating_point():
        got = f"{getattr(feats, 'dtype', type(feats).__name__)} {tuple(getattr(feats, 'shape', ()))}"
        raise ValueError(f"{name} must be a 2-D floating-point torch.Tensor [N, D], got {got}")
    if feats.shape[0] != num_labels:
        raise ValueError(f"{name} has {feats.shape[0]} rows but its labels have {num_labels} entries")
