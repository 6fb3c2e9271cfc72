"""Exact k-nearest-neighbour search behind one function, with faiss or plain torch.

Distances follow ``distance.pairwise_distance``: ``cosine`` = 1 − cos, ``euclidean`` = squared L2.
Results are sorted ascending. Backends:

* ``torch``: chunked over queries and over the database, so memory is bounded by
  ``query_chunk x database_chunk``; the k smallest of each block are merged into a running top-k. Ties are
  broken by the lower database index, exactly (the same order as a stable argsort of the full row).
* ``faiss``: an exact flat index (``IndexFlatIP`` on L2-normalised float32 vectors for cosine,
  ``IndexFlatL2`` for euclidean), on the GPU (``GpuIndexFlat*``) when faiss sees one, else on the CPU.
  faiss promises no order among tied distances, so it is asked for ``FAISS_TIE_MARGIN`` extra neighbours,
  the candidates are re-sorted by (distance, index), and the rare rows whose tie at the k-th distance
  reaches past the extra neighbours are searched again with the torch backend: the same tie rule holds.
* ``auto``: faiss when it can be imported, else torch.
"""

from __future__ import annotations

import numpy as np
import torch

from reidscale.evaluation.distance import check_metric, l2_normalize, pairwise_distance

KNN_BACKENDS: tuple[str, ...] = ("auto", "faiss", "torch")
#: database rows per block of the torch backend (when not given)
DEFAULT_DATABASE_CHUNK = 65536
#: working memory the torch backend aims for when query_chunk is not given
TORCH_BLOCK_BUDGET_BYTES = 256 * 2**20
#: bytes per (query, database) entry of a torch block: distances, matmul temporary, tie masks, cumsum
TORCH_BYTES_PER_ENTRY = 24
#: largest k the faiss GPU flat index supports; larger k runs on the CPU index
FAISS_GPU_MAX_K = 2048
#: extra neighbours asked from faiss so that ties at the k-th distance can be ordered by index
FAISS_TIE_MARGIN = 16


def faiss_available() -> tuple[bool, str]:
    """(usable, description): e.g. ``(True, "faiss 1.15.1, CPU index")`` or ``(False, "<why not>")``."""
    try:
        import faiss
    except ImportError as err:  # faiss is optional
        return False, f"faiss is not importable: {err}"
    return True, f"faiss {faiss.__version__}, {'GPU' if _faiss_gpu_count(faiss) > 0 else 'CPU'} index"


def _faiss_gpu_count(faiss_module) -> int:
    if not hasattr(faiss_module, "StandardGpuResources"):
        return 0
    return faiss_module.get_num_gpus()


def _check_inputs(queries: torch.Tensor, database: torch.Tensor, k: int, metric: str, backend: str) -> None:
    check_metric(metric)
    if backend not in KNN_BACKENDS:
        raise ValueError(f"backend must be one of {KNN_BACKENDS}, got {backend!r}")
    for name, feats in (("queries", queries), ("database", database)):
        if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or not feats.is_floating_point():
            got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise ValueError(f"{name} must be a 2-D floating-point torch.Tensor, got {got}")
        if not bool(torch.isfinite(feats).all()):
            raise ValueError(f"{name} contain NaN or inf")
    if queries.shape[1] != database.shape[1]:
        raise ValueError(
            f"queries and database must have the same dimension, got {queries.shape[1]} "
            f"and {database.shape[1]}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > database.shape[0]:
        raise ValueError(f"k={k} exceeds the number of database rows ({database.shape[0]})")


def _check_chunk(value: int | None, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


def knn_search(
    queries: torch.Tensor,
    database: torch.Tensor,
    k: int,
    metric: str = "cosine",
    backend: str = "auto",
    query_chunk: int | None = None,
    database_chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest database rows of every query.

    queries: [Q, D], database: [N, D] (floating point, same device for the torch backend).
    Returns (distances [Q, k] float32 ascending, indices [Q, k] int64) on the queries' device.
    ``database_chunk`` applies to the torch backend only. k > N raises ValueError.
    """
    _check_inputs(queries, database, k, metric, backend)
    _check_chunk(query_chunk, "query_chunk")
    _check_chunk(database_chunk, "database_chunk")
    if backend == "auto":
        backend = "faiss" if faiss_available()[0] else "torch"
    if backend == "faiss":
        usable, reason = faiss_available()
        if not usable:
            raise ValueError(f"backend='faiss' requested but {reason}")
        return _faiss_knn_index_ties(queries, database, k, metric, query_chunk)
    if queries.device != database.device:
        raise ValueError(f"queries ({queries.device}) and database ({database.device}) must share a device")
    return _torch_knn(queries, database, k, metric, query_chunk, database_chunk)


def _smallest_k(distances: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest entries of each row, ties taken by the lower column; sorted by (value, column).

    distances: [c, b] → (values [c, k], columns [c, k] int64).
    """
    kth_value = distances.topk(k, dim=1, largest=False, sorted=True).values[:, -1:]
    below = distances < kth_value
    at_kth = distances == kth_value
    still_needed = k - below.sum(dim=1, keepdim=True)
    take = below.logical_or_(at_kth.logical_and_(at_kth.cumsum(dim=1) <= still_needed))
    columns = take.nonzero()[:, 1].view(-1, k)  # row-major: ascending columns within a row
    values = distances.gather(1, columns)
    values, order = values.sort(dim=1, stable=True)
    return values, columns.gather(1, order)


def _torch_knn(
    queries: torch.Tensor,
    database: torch.Tensor,
    k: int,
    metric: str,
    query_chunk: int | None,
    database_chunk: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    num_database = database.shape[0]
    if queries.shape[0] == 0:
        return queries.new_zeros((0, k), dtype=torch.float32), torch.zeros(
            (0, k), dtype=torch.int64, device=queries.device
        )
    database_chunk = min(database_chunk or DEFAULT_DATABASE_CHUNK, num_database)
    query_chunk = query_chunk or max(1, TORCH_BLOCK_BUDGET_BYTES // (database_chunk * TORCH_BYTES_PER_ENTRY))
    out_distances, out_indices = [], []
    for q_begin in range(0, queries.shape[0], query_chunk):
        query_block = queries[q_begin : q_begin + query_chunk]
        best_values = best_indices = None
        for d_begin in range(0, num_database, database_chunk):
            block = pairwise_distance(query_block, database[d_begin : d_begin + database_chunk], metric)
            values, columns = _smallest_k(block, min(k, block.shape[1]))
            indices = columns + d_begin
            if best_values is not None:
                # earlier blocks hold lower indices, so a stable sort by value keeps (value, index) order
                values, indices = (
                    torch.cat([best_values, values], dim=1),
                    torch.cat([best_indices, indices], dim=1),
                )
                values, order = values.sort(dim=1, stable=True)
                values, indices = values[:, :k], indices.gather(1, order[:, :k])
            best_values, best_indices = values, indices
        out_distances.append(best_values.float())
        out_indices.append(best_indices)
    return torch.cat(out_distances), torch.cat(out_indices)


def _faiss_knn(
    queries: torch.Tensor, database: torch.Tensor, k: int, metric: str, query_chunk: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss

    if metric == "cosine":
        queries, database = l2_normalize(queries.float()), l2_normalize(database.float())
    query_array = _as_faiss_array(queries)
    dim = query_array.shape[1]
    gpu_resources = None
    if _faiss_gpu_count(faiss) > 0 and k <= FAISS_GPU_MAX_K:
        gpu_resources = faiss.StandardGpuResources()  # must outlive the index
        index_class = faiss.GpuIndexFlatIP if metric == "cosine" else faiss.GpuIndexFlatL2
        index = index_class(gpu_resources, dim)
    else:
        index = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
    index.add(_as_faiss_array(database))
    step = query_chunk or max(1, query_array.shape[0])
    found = [
        index.search(query_array[begin : begin + step], k) for begin in range(0, query_array.shape[0], step)
    ]
    scores = np.concatenate([scores for scores, _ in found]) if found else np.zeros((0, k), np.float32)
    labels = np.concatenate([labels for _, labels in found]) if found else np.zeros((0, k), np.int64)
    distances = torch.from_numpy(1.0 - scores if metric == "cosine" else np.maximum(scores, 0.0))
    del gpu_resources
    return distances.float().to(queries.device), torch.from_numpy(labels).long().to(queries.device)


def _faiss_knn_index_ties(
    queries: torch.Tensor, database: torch.Tensor, k: int, metric: str, query_chunk: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """faiss search with ties at equal distance ordered by the lower database index (see module doc)."""
    num_database = database.shape[0]
    wide = min(num_database, k + FAISS_TIE_MARGIN)
    distances, indices = _faiss_knn(queries, database, wide, metric, query_chunk)
    indices, by_index = indices.sort(dim=1, stable=True)
    distances, by_distance = distances.gather(1, by_index).sort(dim=1, stable=True)
    indices = indices.gather(1, by_distance)
    if wide < num_database:
        unresolved = (distances[:, k - 1] == distances[:, wide - 1]).nonzero().squeeze(1)
        if unresolved.numel() > 0:
            exact = _torch_knn(queries[unresolved], database.to(queries.device), k, metric, None, None)
            distances, indices = distances[:, :k].clone(), indices[:, :k].clone()
            distances[unresolved], indices[unresolved] = exact
    return distances[:, :k].contiguous(), indices[:, :k].contiguous()


def _as_faiss_array(feats: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(feats.detach().float().cpu().numpy())
