"""``eval``: the evaluation section (distances, rank metrics, neighbour search, re-ranking), owned here with
the code that reads it (``evaluator``, ``rerank``, and ``reidscale.neighbours`` through them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reidscale.utils.options import option


@dataclass
class RerankConfig:
    """k-reciprocal re-ranking (Zhong et al. 2017)."""

    enabled: bool = option(False, "re-rank the query-gallery distances before computing metrics")
    k1: int = option(20, "k of the k-reciprocal neighbour sets")
    k2: int = option(6, "neighbours averaged in the local query expansion (1 = none)")
    lambda_value: float = option(0.3, "weight of the original distance in the final distance")


@dataclass
class EvalConfig:
    """ReID evaluation (docs/methods.md): distances, rank metrics, kNN search, re-ranking."""

    metric: Literal["cosine", "euclidean"] = option(
        "cosine", "distance between embeddings: cosine = 1-cos, euclidean = squared L2"
    )
    normalize: bool = option(True, "L2-normalise the features before computing distances")
    max_rank: int = option(50, "largest CMC rank reported")
    query_chunk: int | None = option(None, "queries per chunk; null = chosen from memory_budget_mb")
    memory_budget_mb: int = option(1024, "working memory allowed for one chunk of query-gallery distances")
    knn_backend: Literal["auto", "faiss", "fused", "torch"] = option(
        "auto",
        "nearest-neighbour search (re-ranking): faiss (GPU index when faiss sees a GPU), fused (the "
        "memory-bank top-k kernel; cosine only), chunked torch, or auto (faiss if importable, else torch)",
    )
    device: str = option(
        "auto", "device for distance computation: auto (cuda when available), cpu, cuda, cuda:N"
    )
    rerank: RerankConfig = option(doc="k-reciprocal re-ranking", factory=RerankConfig)
    camera_penalty: float = option(
        0.0,
        "test-time camera term: added to the distance of same-camera query-gallery pairs (after any "
        "re-ranking); 0 = off, the standard protocol. Results record the value used",
    )
    num_visualize: int = option(
        0, "queries drawn in the rank-list PNG (needs image paths in the features file)"
    )

    def __post_init__(self) -> None:
        if self.knn_backend == "fused" and self.rerank.enabled and self.metric != "cosine":
            raise ValueError(
                f"eval.knn_backend 'fused' ranks by cosine similarity only; eval.metric is {self.metric!r} "
                "(use faiss, torch or auto)"
            )
