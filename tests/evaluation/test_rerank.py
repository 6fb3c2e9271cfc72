"""Sparse k-reciprocal re-ranking against a dense numpy reference written straight from the paper's recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidscale.evaluation import rerank
from reidscale.evaluation.rerank import rerank_distance_chunks, rerank_distances

NUM_QUERY, NUM_GALLERY, DIM = 30, 120, 16


def dense_rerank_reference(
    query: np.ndarray, gallery: np.ndarray, k1: int, k2: int, lambda_value: float, metric: str
) -> tuple[np.ndarray, int]:
    """Full N×N re-ranking in float64 → (final [Q, G], number of candidate expansions accepted)."""
    feats = np.concatenate([query, gallery]).astype(np.float64)
    num_query, num_items = len(query), len(feats)
    if metric == "cosine":
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        dist = 1.0 - unit @ unit.T
    else:
        dist = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(axis=2)
    norm_dist = dist / dist.max(axis=1, keepdims=True)
    initial_rank = np.argsort(dist, axis=1, kind="stable")

    def k_reciprocal_sets(k: int) -> list[np.ndarray]:
        in_top = np.zeros((num_items, num_items), dtype=bool)  # in_top[j, i]: i among j's first k+1
        np.put_along_axis(in_top, initial_rank[:, : k + 1], True, axis=1)
        return [initial_rank[i, : k + 1][in_top[initial_rank[i, : k + 1], i]] for i in range(num_items)]

    reciprocal_sets, half_sets = k_reciprocal_sets(k1), k_reciprocal_sets(int(np.around(k1 / 2)))
    weights = np.zeros((num_items, num_items))
    expansions = 0
    for i in range(num_items):
        reciprocal = reciprocal_sets[i]
        expanded = list(reciprocal)
        for candidate in reciprocal:
            candidate_set = half_sets[candidate]
            if len(np.intersect1d(candidate_set, reciprocal)) > 2.0 / 3.0 * len(candidate_set):
                expanded.extend(candidate_set)
                expansions += int(len(np.setdiff1d(candidate_set, reciprocal)) > 0)
        expanded = np.unique(expanded)
        row = np.exp(-norm_dist[i, expanded])
        weights[i, expanded] = row / row.sum()
    if k2 != 1:
        weights = np.stack([weights[initial_rank[i, :k2]].mean(axis=0) for i in range(num_items)])
    shared = np.minimum(weights[:num_query, None, :], weights[None, num_query:, :]).sum(axis=2)
    jaccard = 1.0 - shared / (2.0 - shared)
    final = (1.0 - lambda_value) * jaccard + lambda_value * norm_dist[:num_query, num_query:]
    return final, expansions


def clustered_feats(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """15 identities × 10 noisy samples, shuffled, split into query / gallery: [30, 16], [120, 16]."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(15, DIM))
    feats = np.repeat(centres, 10, axis=0) + 0.6 * rng.normal(size=(150, DIM))
    feats = torch.from_numpy(feats[rng.permutation(150)].astype(np.float32))
    return feats[:NUM_QUERY], feats[NUM_QUERY:]


def tied_feats(seed: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Lattice rows whose distances are exact in float32 and float64, half of them duplicated (or, for
    cosine, duplicated at twice the scale): many exact ties, broken by the lower index in both codes."""
    rng = np.random.default_rng(seed)
    if metric == "euclidean":
        base = rng.integers(-1, 2, size=(100, DIM)).astype(np.float32)
    else:  # four entries of ±0.5: unit norm exactly, dot products multiples of 0.25
        base = np.zeros((100, DIM), dtype=np.float32)
        for row in base:
            row[rng.choice(DIM, size=4, replace=False)] = rng.choice([-0.5, 0.5], size=4)
    copies = base[rng.choice(100, size=50, replace=False)] * (2.0 if metric == "cosine" else 1.0)
    feats = torch.from_numpy(np.concatenate([base, copies])[rng.permutation(150)])
    return feats[:NUM_QUERY], feats[NUM_QUERY:]


K_VARIANTS = [(20, 6), (20, 1), (5, 1), (7, 3), (3, 4), (1, 2)]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_dense_reference_on_clustered_data(seed: int, metric: str) -> None:
    query, gallery = clustered_feats(seed)
    for k1, k2 in K_VARIANTS:
        lambda_value = 0.3 if k2 != 3 else 0.0
        expected, expansions = dense_rerank_reference(
            query.numpy(), gallery.numpy(), k1, k2, lambda_value, metric
        )
        got = rerank_distances(query, gallery, k1=k1, k2=k2, lambda_value=lambda_value, metric=metric)
        assert got.shape == (NUM_QUERY, NUM_GALLERY) and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=0, err_msg=f"k1={k1} k2={k2}")
        if k1 == 20:
            assert expansions > 0, "the data must exercise the expansion step"


@pytest.mark.parametrize("knn_backend", ["torch", "faiss"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", [3, 4])
def test_matches_dense_reference_with_exact_ties(seed: int, metric: str, knn_backend: str) -> None:
    if knn_backend == "faiss":
        pytest.importorskip("faiss")
    query, gallery = tied_feats(seed, metric)
    for k1, k2 in K_VARIANTS:
        expected, _ = dense_rerank_reference(query.numpy(), gallery.numpy(), k1, k2, 0.3, metric)
        got = rerank_distances(query, gallery, k1=k1, k2=k2, metric=metric, knn_backend=knn_backend)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=0, err_msg=f"k1={k1} k2={k2}")


def test_small_internal_blocks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    query, gallery = clustered_feats(5)
    expected, _ = dense_rerank_reference(query.numpy(), gallery.numpy(), 20, 6, 0.3, "euclidean")
    monkeypatch.setattr(rerank, "_BLOCK_ELEMENTS", 97)  # forces every chunked loop to split many times
    got = rerank_distances(query, gallery, k1=20, k2=6, metric="euclidean", query_chunk=8)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("query_chunk", [1, 7, 29, 30, 1000])
def test_query_chunk_size_does_not_change_the_result(query_chunk: int) -> None:
    query, gallery = clustered_feats(6)
    whole = rerank_distances(query, gallery, metric="cosine", query_chunk=NUM_QUERY)
    starts, chunks = [], []
    for start, chunk in rerank_distance_chunks(query, gallery, metric="cosine", query_chunk=query_chunk):
        assert chunk.shape == (min(query_chunk, NUM_QUERY - start), NUM_GALLERY)
        starts.append(start)
        chunks.append(chunk)
    assert starts == list(range(0, NUM_QUERY, query_chunk))
    torch.testing.assert_close(torch.cat(chunks), whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_faiss_and_torch_knn_backends_agree(metric: str) -> None:
    pytest.importorskip("faiss")
    query, gallery = clustered_feats(7)
    with_torch = rerank_distances(query, gallery, metric=metric, knn_backend="torch")
    with_faiss = rerank_distances(query, gallery, metric=metric, knn_backend="faiss")
    torch.testing.assert_close(with_faiss, with_torch, atol=1e-6, rtol=0)


def test_lambda_one_is_the_row_normalised_original_distance() -> None:
    query, gallery = clustered_feats(8)
    feats = torch.cat([query, gallery]).double()
    squared = torch.cdist(feats, feats).square()
    expected = (squared / squared.max(dim=1, keepdim=True).values)[:NUM_QUERY, NUM_QUERY:]
    got = rerank_distances(query, gallery, lambda_value=1.0, metric="euclidean")
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)


def test_float64_inputs_give_float32_output() -> None:
    query, gallery = clustered_feats(9)
    from_double = rerank_distances(query.double(), gallery.double(), k1=5, k2=2)
    assert from_double.dtype == torch.float32
    torch.testing.assert_close(from_double, rerank_distances(query, gallery, k1=5, k2=2), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k1": 0}, "k1"),
        ({"k1": 2.5}, "k1"),
        ({"k1": True}, "k1"),
        ({"k2": 0}, "k2"),
        ({"k1": 4, "k2": 6}, "k2"),
        ({"lambda_value": -0.1}, "lambda_value"),
        ({"lambda_value": 1.5}, "lambda_value"),
        ({"metric": "manhattan"}, "metric"),
        ({"query_chunk": 0}, "query_chunk"),
        ({"k1": 10}, "k1 = 10 needs at least"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs: dict, message: str) -> None:
    query, gallery = torch.randn(3, 4), torch.randn(6, 4)
    with pytest.raises(ValueError, match=message):
        rerank_distance_chunks(query, gallery, **kwargs)  # raises at call time, before iteration


@pytest.mark.parametrize(
    ("query", "gallery", "message"),
    [
        (torch.randn(3), torch.randn(6, 4), "query_feats"),
        (torch.randn(3, 4), torch.randint(0, 5, (6, 4)), "gallery_feats"),
        (torch.randn(0, 4), torch.randn(6, 4), "query_feats"),
        (torch.randn(3, 4), torch.randn(6, 5), "same D"),
        (torch.tensor([[float("nan")] * 4] * 3), torch.randn(6, 4), "query_feats holds NaN"),
    ],
)
def test_bad_features_raise(query: torch.Tensor, gallery: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rerank_distances(query, gallery, k1=2, k2=1)
