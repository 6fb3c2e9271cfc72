"""Distances between embeddings and exact nearest-neighbour search (faiss, the fused bank kernel, torch):
what evaluation ranks with and what any other neighbour search (e.g. clustering tracklets) shares."""

from reidscale.neighbours.distance import check_metric, distance_chunks, l2_normalize, pairwise_distance
from reidscale.neighbours.search import NEIGHBOUR_SEARCH_BACKENDS, faiss_available, knn_search

__all__ = [
    "NEIGHBOUR_SEARCH_BACKENDS",
    "check_metric",
    "distance_chunks",
    "faiss_available",
    "knn_search",
    "l2_normalize",
    "pairwise_distance",
]
