"""Pairwise distances between embeddings, the one definition every evaluation path uses.

``cosine``    d(a, b) = 1 − ⟨a/‖a‖, b/‖b‖⟩             ∈ [0, 2]
``euclidean`` d(a, b) = ‖a − b‖²  (squared: same ranking as Euclidean, cheaper, what re-ranking expects)

Both are computed with one matrix product in the dtype of the inputs (fp32 unless the caller passes fp64).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch

DistanceMetric = Literal["cosine", "euclidean"]
DISTANCE_METRICS: tuple[str, ...] = ("cosine", "euclidean")


def check_metric(metric: str) -> None:
    """Raise ValueError naming the argument when ``metric`` is not one of DISTANCE_METRICS."""
    if metric not in DISTANCE_METRICS:
        raise ValueError(f"metric must be one of {DISTANCE_METRICS}, got {metric!r}")


def l2_normalize(feats: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows scaled to unit L2 norm. feats: [N, D] → [N, D] (zero rows stay zero)."""
    return feats / feats.norm(dim=1, keepdim=True).clamp_min(eps)


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, metric: DistanceMetric = "cosine") -> torch.Tensor:
    """Distances between every row of ``a`` and every row of ``b``.

    a: [M, D], b: [N, D] (same dtype and device) → [M, N] in that dtype; smaller means closer.
    """
    check_metric(metric)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"expected a: [M, D] and b: [N, D] with the same D, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if metric == "cosine":
        return 1.0 - l2_normalize(a) @ l2_normalize(b).T
    sq_a = (a * a).sum(dim=1, keepdim=True)
    sq_b = (b * b).sum(dim=1, keepdim=True).T
    return (sq_a + sq_b - 2.0 * (a @ b.T)).clamp_min_(0.0)


def distance_chunks(
    query_feats: torch.Tensor, gallery_feats: torch.Tensor, metric: DistanceMetric, query_chunk: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Query-gallery distances a block of rows at a time, so Q × G never has to fit in memory.

    query_feats: [Q, D], gallery_feats: [G, D] → yields (first row, distances [c, G]), c ≤ query_chunk.
    """
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")
    check_metric(metric)
    for start in range(0, query_feats.shape[0], query_chunk):
        yield start, pairwise_distance(query_feats[start : start + query_chunk], gallery_feats, metric)
