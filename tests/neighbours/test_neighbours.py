"""The neighbours API: every backend against brute force (full matrix + stable argsort, and an
independent numpy float64 matrix + lexsort), faiss against torch, the fused backend's limits, and the
fused backend on the Triton interpreter (one subprocess)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from reidscale.kernels.support import BANK_TOPK_MAX_K
from reidscale.neighbours import NEIGHBOUR_SEARCH_BACKENDS, faiss_available, knn_search
from tests.support.neighbour_cases import brute_force, numpy_brute_force, tied_features
from tests.support.processes import run_command

FAISS_USABLE, FAISS_REASON = faiss_available()
needs_faiss = pytest.mark.skipif(not FAISS_USABLE, reason=FAISS_REASON)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize(("query_chunk", "database_chunk"), [(None, None), (5, 7), (1, 1), (64, 200)])
def test_torch_backend_equals_brute_force_with_ties(metric: str, query_chunk, database_chunk):
    queries, database = tied_features(metric, num_queries=23, num_distinct=17, copies=3, seed=1)  # N = 51
    expected_distances, expected_indices = brute_force(queries, database, 9, metric)
    distances, indices = knn_search(
        queries, database, 9, metric, backend="torch", query_chunk=query_chunk, database_chunk=database_chunk
    )
    assert torch.equal(indices, expected_indices)
    assert distances.dtype == torch.float32 and indices.dtype == torch.int64
    torch.testing.assert_close(distances, expected_distances.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_torch_backend_on_random_float32(metric: str):
    generator = torch.Generator().manual_seed(2)
    queries, database = torch.randn(31, 12, generator=generator), torch.randn(97, 12, generator=generator)
    expected_distances, expected_indices = brute_force(queries, database, 10, metric)
    distances, indices = knn_search(
        queries, database, 10, metric, backend="torch", query_chunk=4, database_chunk=10
    )
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(distances, expected_distances, rtol=0, atol=1e-5)
    assert bool((distances[:, 1:] >= distances[:, :-1]).all())


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_k_equals_database_size_returns_the_full_order(metric: str):
    queries, database = tied_features(metric, num_queries=6, num_distinct=5, copies=2, seed=3)
    distances, indices = knn_search(
        queries, database, database.shape[0], metric, backend="torch", database_chunk=3
    )
    expected_distances, expected_indices = brute_force(queries, database, database.shape[0], metric)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(distances, expected_distances.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_k_larger_than_database_raises(backend: str):
    with pytest.raises(ValueError, match=r"k=6 exceeds the number of database rows \(5\)"):
        knn_search(torch.randn(2, 4), torch.randn(5, 4), 6, backend=backend)


def test_bad_arguments_raise_clear_errors():
    queries, database = torch.randn(2, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        knn_search(queries, database, 2, backend="annoy")
    with pytest.raises(ValueError, match="metric must be one of"):
        knn_search(queries, database, 2, metric="dot")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        knn_search(queries, database, 0)
    with pytest.raises(ValueError, match="same dimension"):
        knn_search(queries, torch.randn(5, 3), 2)
    with pytest.raises(ValueError, match="database must be a 2-D floating-point"):
        knn_search(queries, torch.ones(5, 4, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="queries contain NaN or inf"):
        knn_search(torch.full((2, 4), float("nan")), database, 2)
    with pytest.raises(ValueError, match="database_chunk"):
        knn_search(queries, database, 2, backend="torch", database_chunk=0)


def test_no_queries_gives_empty_results():
    distances, indices = knn_search(torch.randn(0, 4), torch.randn(5, 4), 3, backend="torch")
    assert distances.shape == (0, 3) and indices.shape == (0, 3)


@needs_faiss
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("query_chunk", [None, 7])
def test_faiss_backend_equals_torch_backend(metric: str, query_chunk):
    generator = torch.Generator().manual_seed(4)
    # scaled so that distances are O(1) and float32 rounding stays far below the 1e-5 tolerance
    queries, database = (torch.randn(n, 32, generator=generator) / 32**0.5 for n in (40, 300))
    torch_distances, torch_indices = knn_search(queries, database, 15, metric, backend="torch")
    faiss_distances, faiss_indices = knn_search(
        queries, database, 15, metric, backend="faiss", query_chunk=query_chunk
    )
    assert torch.equal(faiss_indices, torch_indices)
    assert faiss_distances.dtype == torch.float32 and faiss_indices.dtype == torch.int64
    torch.testing.assert_close(faiss_distances, torch_distances, rtol=0, atol=1e-5)


@needs_faiss
def test_auto_backend_uses_faiss_and_reports_it():
    assert FAISS_REASON.startswith("faiss ")
    generator = torch.Generator().manual_seed(5)
    queries, database = torch.randn(8, 16, generator=generator), torch.randn(50, 16, generator=generator)
    _, auto_indices = knn_search(queries, database, 5)
    _, torch_indices = knn_search(queries, database, 5, backend="torch")
    assert torch.equal(auto_indices, torch_indices)


@needs_faiss
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("copies", [3, 40])  # 40 copies: ties reach past faiss's extra neighbours
def test_faiss_backend_breaks_ties_by_lower_index(metric: str, copies: int):
    queries, database = tied_features(metric, num_queries=23, num_distinct=5, copies=copies, seed=4)
    expected_distances, expected_indices = brute_force(queries, database, 9, metric)
    distances, indices = knn_search(queries, database, 9, metric, backend="faiss")
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(distances, expected_distances.float(), rtol=0, atol=1e-5)


# -------------------------------------------------------------------- every backend vs numpy brute force


#: (metric, backend) pairs the API serves; fused is cosine only
METRIC_BACKENDS = [
    *(pytest.param(metric, "faiss", marks=needs_faiss) for metric in ("cosine", "euclidean")),
    ("cosine", "torch"),
    ("euclidean", "torch"),
    ("cosine", "fused"),
]


@pytest.mark.parametrize(("metric", "backend"), METRIC_BACKENDS)
@pytest.mark.parametrize(("query_chunk", "database_chunk"), [(None, None), (4, 7)])
def test_every_backend_equals_the_numpy_brute_force(metric: str, backend: str, query_chunk, database_chunk):
    queries, database = tied_features(metric, num_queries=19, num_distinct=13, copies=4, seed=7)  # N = 52
    want_distances, want_indices = numpy_brute_force(queries, database, 11, metric)
    distances, indices = knn_search(
        queries, database, 11, metric, backend=backend, query_chunk=query_chunk, database_chunk=database_chunk
    )
    assert distances.dtype == torch.float32 and indices.dtype == torch.int64
    assert np.array_equal(indices.numpy(), want_indices)
    np.testing.assert_allclose(distances.numpy(), want_distances, rtol=0, atol=1e-6)


def test_fused_backend_equals_torch_backend_on_random_features():
    generator = torch.Generator().manual_seed(8)
    queries, database = torch.randn(17, 24, generator=generator), torch.randn(230, 24, generator=generator)
    torch_distances, torch_indices = knn_search(queries, database, 12, backend="torch")
    fused_distances, fused_indices = knn_search(queries, database, 12, backend="fused", database_chunk=50)
    assert torch.equal(fused_indices, torch_indices)
    torch.testing.assert_close(fused_distances, torch_distances, rtol=0, atol=1e-6)


def test_fused_backend_says_what_it_supports():
    queries, database = torch.randn(3, 4), torch.randn(6, 4)
    with pytest.raises(
        ValueError, match=r"backend='fused' .* supports metric='cosine' only, got 'euclidean'"
    ):
        knn_search(queries, database, 2, metric="euclidean", backend="fused")
    big = torch.randn(BANK_TOPK_MAX_K + 1, 4)
    with pytest.raises(ValueError, match=rf"backend='fused' serves k <= {BANK_TOPK_MAX_K}"):
        knn_search(queries, big, BANK_TOPK_MAX_K + 1, backend="fused")
    empty_distances, empty_indices = knn_search(queries[:0], database, 2, backend="fused")
    assert empty_distances.shape == (0, 2) and empty_indices.shape == (0, 2)


def test_backend_names_are_the_choices():
    assert NEIGHBOUR_SEARCH_BACKENDS == ("auto", "faiss", "fused", "torch")


_FUSED_INTERPRETER_SCRIPT = r"""
import json, warnings
from reidscale.kernels import dispatch
from reidscale.neighbours import knn_search
from tests.support.neighbour_cases import numpy_brute_force, tied_features
warnings.simplefilter("error")  # the Triton kernel must serve every call: a fallback fails the run
queries, database = tied_features("cosine", num_queries=9, num_distinct=11, copies=3, seed=9)
out = {"backend": dispatch.choose_backend("bank_topk", queries.device, k=7)}
distances, indices = knn_search(queries, database, 7, "cosine", backend="fused", query_chunk=5)
want_distances, want_indices = numpy_brute_force(queries, database, 7, "cosine")
out["indices"] = indices.tolist() == want_indices.tolist()
out["distance_error"] = float(abs(distances.double().numpy() - want_distances).max())
print(json.dumps(out))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the fused backend runs the compiled kernels")
def test_fused_backend_on_the_triton_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "REIDSCALE_KERNELS": "triton"}
    proc = run_command([sys.executable, "-c", _FUSED_INTERPRETER_SCRIPT], env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"backend": "triton", "indices": True, "distance_error": 0.0}
