"""Neighbour-search cases: features with exactly computable, tied distances, and two brute forces."""

from __future__ import annotations

import numpy as np
import torch

from reidscale.neighbours.distance import pairwise_distance


def brute_force(queries: torch.Tensor, database: torch.Tensor, k: int, metric: str):
    """The definition in torch, in the inputs' dtype: the k smallest of the full distance matrix in the order
    of a stable argsort (ties by the lower index); exact where the distances are (``tied_features``)."""
    distances = pairwise_distance(queries, database, metric)
    order = distances.argsort(dim=1, stable=True)[:, :k]
    return distances.gather(1, order), order


def tied_features(metric: str, num_queries: int, num_distinct: int, copies: int, seed: int):
    """Features whose distances are computed exactly, with every database row repeated ``copies`` times
    (interleaved, so tied rows sit far apart). cosine: ±1 entries in D=16 (norm 4, exact after
    normalisation); euclidean: small integers in float64."""
    generator = torch.Generator().manual_seed(seed)
    if metric == "cosine":
        signs = torch.randint(0, 2, (num_queries + num_distinct, 16), generator=generator).double() * 2 - 1
        queries, distinct = signs.split([num_queries, num_distinct])
    else:
        values = torch.randint(-2, 3, (num_queries + num_distinct, 6), generator=generator).double()
        queries, distinct = values.split([num_queries, num_distinct])
    return queries, distinct.repeat(copies, 1)


def numpy_brute_force(queries: torch.Tensor, database: torch.Tensor, k: int, metric: str):
    """(distances [Q, k] float64, indices [Q, k]) from the float64 numpy matrix, rows ordered by lexsort."""
    q, d = queries.double().numpy(), database.double().numpy()
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
        full = 1.0 - q @ d.T
    else:
        full = ((q[:, None, :] - d[None, :, :]) ** 2).sum(axis=2)
    columns = np.arange(full.shape[1])
    order = np.stack([np.lexsort((columns, row))[:k] for row in full])
    return np.take_along_axis(full, order, axis=1), order
