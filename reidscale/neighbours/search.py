"""Exact k-nearest-neighbour search behind one function, with faiss, the fused bank kernel, or plain torch.

The one neighbours API of the project: evaluation ranks with it (k-reciprocal re-ranking) and so can any
other part that needs exact feature neighbours (e.g. clustering tracklets by kNN). It is a package of its
own so those callers share it without importing each other: it depends only on ``reidscale.kernels``
(the exact chunked top-k, and the fused ``bank_topk`` through its dispatch) and on the distance
definitions beside it (``distance.py``, plain torch), never on jobs, objectives or the evaluation
pipeline. The kernels never import it.

Distances follow ``distance.pairwise_distance``: ``cosine`` = 1 − cos, ``euclidean`` = squared L2.
Results are sorted ascending, ties broken by the lower database index. Backends
(:data:`NEIGHBOUR_SEARCH_BACKENDS`):

* ``torch``: chunked over queries and over the database, so memory is bounded by
  ``query_chunk x database_chunk``; each block of distances is ranked with the exact chunked top-k of
  ``reidscale.kernels.chunked_topk`` (the same code as the torch reference of ``bank_topk``). Ties are
  broken by the lower database index, exactly (the order of a stable argsort of the full row).
* ``faiss``: an exact flat index (``IndexFlatIP`` on L2-normalised float32 vectors for cosine,
  ``IndexFlatL2`` for euclidean), on the GPU (``GpuIndexFlat*``) when faiss sees one, else on the CPU.
  faiss promises no order among tied distances, so it is asked for ``FAISS_TIE_MARGIN`` extra neighbours,
  the candidates are re-sorted by (distance, index), and the rare rows whose tie at the k-th distance
  reaches past the extra neighbours are searched again with the torch backend: the same tie rule holds.
* ``fused``: ``reidscale.kernels.bank_topk`` (CUDA kernel → Triton → torch reference, as its dispatch
  chooses) over the L2-normalised float32 features, ranking by the inner product, which is the cosine
  similarity; the distance returned is 1 − that score. It therefore serves ``metric="cosine"`` only, and
  k ≤ ``BANK_TOPK_MAX_K``. Ties of the score are broken by the lower index; distances that tie only after
  the rounding of 1 − score keep the score order.
* ``auto``: faiss when it can be imported, else torch.
"""

from __future__ import annotations

import numpy as np
import torch

from reidscale.kernels import bank_topk
from reidscale.kernels.checks import check_optional_positive_int
from reidscale.kernels.chunked_topk import RunningTopK
from reidscale.kernels.support import BANK_TOPK_MAX_K
from reidscale.neighbours.distance import check_metric, l2_normalize, pairwise_distance

#: what ``knn_search``'s ``backend`` takes
NEIGHBOUR_SEARCH_BACKENDS: tuple[str, ...] = ("auto", "faiss", "fused", "torch")
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
    if backend not in NEIGHBOUR_SEARCH_BACKENDS:
        raise ValueError(f"backend must be one of {NEIGHBOUR_SEARCH_BACKENDS}, got {backend!r}")
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


def knn_search(
    queries: torch.Tensor,
    database: torch.Tensor,
    k: int,
    metric: str = "cosine",
    backend: str = "auto",
    query_chunk: int | None = None,
    database_chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest database rows of every query (module docstring: backends and tie rule).

    Args:
        queries: [Q, D] floating point, finite.
        database: [N, D] floating point, finite (same device as the queries for ``torch`` and ``fused``).
        k: 1 ≤ k ≤ N.
        metric: ``"cosine"`` or ``"euclidean"`` (``fused``: cosine only).
        backend: one of :data:`NEIGHBOUR_SEARCH_BACKENDS`.
        query_chunk: queries per step (None: by memory budget for torch, all at once otherwise).
        database_chunk: database rows per step of the torch backend, and of the torch reference under
            ``fused``.

    Returns:
        (distances [Q, k] float32 ascending, indices [Q, k] int64) on the queries' device.

    Raises:
        ValueError: a malformed argument, k > N, faiss asked for but missing, or a ``fused`` call outside
            what it serves (metric, k).
    """
    _check_inputs(queries, database, k, metric, backend)
    check_optional_positive_int("query_chunk", query_chunk)
    check_optional_positive_int("database_chunk", database_chunk)
    if backend == "auto":
        backend = "faiss" if faiss_available()[0] else "torch"
    if backend == "faiss":
        usable, reason = faiss_available()
        if not usable:
            raise ValueError(f"backend='faiss' requested but {reason}")
        return _faiss_knn_index_ties(queries, database, k, metric, query_chunk)
    if queries.device != database.device:
        raise ValueError(f"queries ({queries.device}) and database ({database.device}) must share a device")
    if backend == "fused":
        return _fused_knn(queries, database, k, metric, query_chunk, database_chunk)
    return _torch_knn(queries, database, k, metric, query_chunk, database_chunk)


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
        nearest = RunningTopK(
            query_block.shape[0], k, largest=False, dtype=query_block.dtype, device=query_block.device
        )
        for d_begin in range(0, num_database, database_chunk):
            nearest.add(pairwise_distance(query_block, database[d_begin : d_begin + database_chunk], metric))
        distances, indices = nearest.result()
        out_distances.append(distances.float())
        out_indices.append(indices)
    return torch.cat(out_distances), torch.cat(out_indices)


def _fused_knn(
    queries: torch.Tensor,
    database: torch.Tensor,
    k: int,
    metric: str,
    query_chunk: int | None,
    database_chunk: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine neighbours through ``reidscale.kernels.bank_topk`` on L2-normalised float32 features."""
    if metric != "cosine":
        raise ValueError(
            "backend='fused' ranks by the inner product of L2-normalised features, so it supports "
            f"metric='cosine' only, got {metric!r}; use backend='torch' or 'faiss' for {metric!r}"
        )
    if k > BANK_TOPK_MAX_K:
        raise ValueError(
            f"backend='fused' serves k <= {BANK_TOPK_MAX_K} (one bank_topk call), got k={k}; "
            "use backend='torch' or 'faiss'"
        )
    bank = l2_normalize(database.float())
    normalised = l2_normalize(queries.float())
    step = query_chunk or max(1, normalised.shape[0])
    out_distances, out_indices = [], []
    for begin in range(0, normalised.shape[0], step):
        scores, indices = bank_topk(normalised[begin : begin + step], bank, k, bank_chunk=database_chunk)
        out_distances.append(1.0 - scores)
        out_indices.append(indices)
    if not out_distances:
        return queries.new_zeros((0, k), dtype=torch.float32), torch.zeros(
            (0, k), dtype=torch.int64, device=queries.device
        )
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
