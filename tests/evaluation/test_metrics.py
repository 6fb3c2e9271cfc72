"""Rank metrics against hand-worked cases and the plain per-query reference loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidscale.evaluation import metrics as metrics_module
from reidscale.evaluation.metrics import (
    RankMetricAccumulator,
    RankMetrics,
    evaluate_distances,
    evaluate_features,
    query_chunk_size,
)
from reidscale.neighbours import distance as distance_module
from reidscale.neighbours.distance import pairwise_distance
from tests.support.reference.eval_loop import eval_loop

TOL = 1e-6


def assert_matches_reference(result: RankMetrics, reference: dict, tol: float = TOL) -> None:
    assert result.num_valid_queries == reference["num_valid_queries"]
    assert result.num_skipped_queries == reference["num_skipped_queries"]
    assert abs(result.mAP - reference["mAP"]) <= tol
    assert abs(result.mINP - reference["mINP"]) <= tol
    assert len(result.cmc) == len(reference["cmc"])
    assert np.max(np.abs(np.array(result.cmc) - np.array(reference["cmc"]))) <= tol


def assert_same_metrics(first: RankMetrics, second: RankMetrics, tol: float = 1e-12) -> None:
    assert (first.num_valid_queries, first.num_skipped_queries) == (
        second.num_valid_queries,
        second.num_skipped_queries,
    )
    assert abs(first.mAP - second.mAP) <= tol
    assert abs(first.mINP - second.mINP) <= tol
    assert np.allclose(first.cmc, second.cmc, rtol=0, atol=tol)


def random_case(seed: int, num_query: int, num_gallery: int, num_ids: int, num_cams: int, integer: bool):
    """Labels with distractors (pid 0), query ids missing from the gallery and few cameras; distances
    integer-valued (massive ties) or continuous."""
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, num_ids, num_gallery)
    g_cams = rng.integers(0, num_cams, num_gallery)
    q_pids = rng.integers(1, num_ids + 2, num_query)
    q_cams = rng.integers(0, num_cams, num_query)
    if integer:
        distmat = rng.integers(0, 6, (num_query, num_gallery)).astype(np.float32)
    else:
        distmat = rng.random((num_query, num_gallery)).astype(np.float32)
    return distmat, q_pids, q_cams, g_pids, g_cams


# one query (pid 1, camera 0) and six gallery items: (distance, pid, camera)
HAND_GALLERY = [(0.5, 1, 1), (0.1, 2, 1), (0.2, 1, 0), (0.3, 1, 2), (0.4, 0, 1), (0.6, 3, 0)]


def test_hand_worked_single_query():
    # ranked: 0.1 wrong, [0.2 same pid+camera: removed], 0.3 hit (rank 2), 0.4 distractor,
    # 0.5 hit (rank 4), 0.6 wrong
    distmat = torch.tensor([[d for d, _, _ in HAND_GALLERY]])
    g_pids = [p for _, p, _ in HAND_GALLERY]
    g_cams = [c for _, _, c in HAND_GALLERY]
    result = evaluate_distances(distmat, [1], [0], g_pids, g_cams, max_rank=8)
    assert result.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert result.mINP == pytest.approx(2 / 4)
    assert result.cmc == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # 5 ranked items, padded to 8
    assert (result.num_valid_queries, result.num_skipped_queries) == (1, 0)
    reference = eval_loop(
        distmat.numpy(), np.array([1]), np.array([0]), np.array(g_pids), np.array(g_cams), 8
    )
    assert_matches_reference(result, reference, tol=1e-12)


def test_hand_worked_ties_broken_by_gallery_index():
    # all distances equal: the ranking is the gallery order; pids 2,1,2,1,1 seen from another camera
    distmat = torch.ones(1, 5)
    result = evaluate_distances(distmat, [1], [0], [2, 1, 2, 1, 1], [1, 1, 1, 1, 1], max_rank=3)
    assert result.mAP == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    assert result.mINP == pytest.approx(3 / 5)
    assert result.cmc == [0.0, 1.0, 1.0]


def test_hand_worked_two_queries_one_skipped():
    # query 0 (pid 1, cam 0): gallery hit at rank 1 of 3; query 1 (pid 2, cam 1): its only pid-2 item is
    # in camera 1 too, so it is skipped
    distmat = torch.tensor([[0.2, 0.1, 0.3], [0.1, 0.2, 0.3]])
    result = evaluate_distances(distmat, [1, 2], [0, 1], [2, 1, 1], [1, 1, 2], max_rank=2)
    # query 0 ranked: 0.1 pid 1 (hit, rank 1), 0.2 pid 2, 0.3 pid 1 (hit, rank 3)
    assert result.mAP == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert result.mINP == pytest.approx(2 / 3)
    assert result.cmc == [1.0, 1.0]
    assert (result.num_valid_queries, result.num_skipped_queries) == (1, 1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("integer", [True, False])
def test_random_cases_match_reference(seed: int, integer: bool):
    rng = np.random.default_rng(100 + seed)
    num_query, num_gallery = int(rng.integers(1, 60)), int(rng.integers(1, 400))
    case = random_case(
        seed, num_query, num_gallery, num_ids=int(rng.integers(2, 30)), num_cams=2, integer=integer
    )
    try:
        reference = eval_loop(*case, max_rank=20)
    except ValueError:
        with pytest.raises(ValueError, match="no valid query"):
            evaluate_distances(torch.from_numpy(case[0]), *case[1:], max_rank=20)
        return
    result = evaluate_distances(
        torch.from_numpy(case[0]), *case[1:], max_rank=20, query_chunk=int(rng.integers(1, 9))
    )
    assert_matches_reference(result, reference)


def test_larger_continuous_case_matches_reference():
    # enough gallery items that many share the distance grid's bins with positives and many do not
    distmat, q_pids, q_cams, g_pids, g_cams = random_case(7, 41, 3001, num_ids=40, num_cams=6, integer=False)
    distmat = (distmat * 1000).round() / 1000  # some exact ties among continuous values
    result = evaluate_distances(torch.from_numpy(distmat), q_pids, q_cams, g_pids, g_cams)
    assert_matches_reference(result, eval_loop(distmat, q_pids, q_cams, g_pids, g_cams))
    assert result.num_skipped_queries > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes_match_reference(dtype: torch.dtype):
    distmat, q_pids, q_cams, g_pids, g_cams = random_case(3, 23, 257, num_ids=12, num_cams=3, integer=False)
    distances = torch.from_numpy(distmat).to(dtype)
    reference = eval_loop(distances.double().numpy(), q_pids, q_cams, g_pids, g_cams, max_rank=10)
    result = evaluate_distances(distances, q_pids, q_cams, g_pids, g_cams, max_rank=10, query_chunk=5)
    assert_matches_reference(result, reference)


def test_infinite_distances_match_reference():
    distmat, q_pids, q_cams, g_pids, g_cams = random_case(5, 30, 200, num_ids=10, num_cams=3, integer=True)
    rng = np.random.default_rng(0)
    distmat[rng.random(distmat.shape) < 0.2] = np.inf
    distmat[rng.random(distmat.shape) < 0.05] = -np.inf
    result = evaluate_distances(torch.from_numpy(distmat), q_pids, q_cams, g_pids, g_cams, query_chunk=4)
    assert_matches_reference(result, eval_loop(distmat, q_pids, q_cams, g_pids, g_cams))


def test_same_camera_only_positives_are_skipped():
    # every gallery item of pid 1 is in the query's camera: skipped; pid 2 has one valid match
    distmat = torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 2)
    result = evaluate_distances(distmat, [1, 2], [0, 0], [1, 1, 2, 3], [0, 0, 1, 0], max_rank=4)
    assert (result.num_valid_queries, result.num_skipped_queries) == (1, 1)
    # query pid 2 ranks 0.1 (pid 1), 0.2 (pid 1), 0.3 (pid 2, camera 1: hit at rank 3), 0.4 (pid 3)
    assert result.mAP == pytest.approx(1 / 3)
    assert result.mINP == pytest.approx(1 / 3)
    assert result.cmc == [0.0, 0.0, 1.0, 1.0]


def test_chunking_gives_identical_results():
    distmat, q_pids, q_cams, g_pids, g_cams = random_case(11, 50, 300, num_ids=15, num_cams=4, integer=True)
    distances = torch.from_numpy(distmat)
    results = [
        evaluate_distances(distances, q_pids, q_cams, g_pids, g_cams, query_chunk=chunk)
        for chunk in (1, 7, 50)
    ]
    for other in results[1:]:
        assert_same_metrics(other, results[0])


def test_accumulator_updates_in_pieces_equal_one_call():
    distmat, q_pids, q_cams, g_pids, g_cams = random_case(12, 30, 120, num_ids=10, num_cams=3, integer=False)
    accumulator = RankMetricAccumulator(torch.from_numpy(g_pids), torch.from_numpy(g_cams), max_rank=5)
    for rows in (slice(0, 3), slice(3, 3), slice(3, 30)):
        accumulator.update(torch.from_numpy(distmat[rows]), q_pids[rows], q_cams[rows])
    assert_matches_reference(accumulator.compute(), eval_loop(distmat, q_pids, q_cams, g_pids, g_cams, 5))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_evaluate_features_equals_evaluate_distances(metric: str):
    rng = np.random.default_rng(21)
    if metric == "cosine":  # ±1 entries in D=16: unit norm 4, so normalised products are exact
        query, gallery = (torch.from_numpy(rng.choice([-1.0, 1.0], (n, 16))) for n in (37, 211))
    else:
        query, gallery = (torch.from_numpy(rng.integers(-3, 4, (n, 8)).astype(np.float64)) for n in (37, 211))
    _, q_pids, q_cams, g_pids, g_cams = random_case(21, 37, 211, num_ids=9, num_cams=3, integer=True)
    from_distances = evaluate_distances(
        pairwise_distance(query, gallery, metric), q_pids, q_cams, g_pids, g_cams
    )
    for chunk in (1, 7, None):
        from_features = evaluate_features(
            query, gallery, q_pids, q_cams, g_pids, g_cams, metric, query_chunk=chunk
        )
        assert_same_metrics(from_features, from_distances)
    reference = eval_loop(pairwise_distance(query, gallery, metric).numpy(), q_pids, q_cams, g_pids, g_cams)
    assert_matches_reference(from_features, reference)


def test_evaluate_features_never_builds_the_full_matrix(monkeypatch):
    seen_rows = []

    def recording_distance(a, b, metric):
        seen_rows.append(a.shape[0])
        return pairwise_distance(a, b, metric)

    monkeypatch.setattr(distance_module, "pairwise_distance", recording_distance)
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(50, 4, generator=generator), torch.randn(5000, 4, generator=generator)
    q_pids, g_pids = rng.integers(0, 500, 50), rng.integers(0, 500, 5000)
    evaluate_features(
        query, gallery, q_pids, np.zeros(50, int), g_pids, np.ones(5000, int), memory_budget_mb=1
    )
    expected_chunk = query_chunk_size(5000, 1, metrics_module.UPDATE_BYTES_PER_ENTRY)
    assert max(seen_rows) == expected_chunk < 50
    assert sum(seen_rows) == 50


def test_query_chunk_size():
    assert query_chunk_size(1000, memory_budget_mb=1, bytes_per_entry=24) == 2**20 // 24000
    assert query_chunk_size(10**9, memory_budget_mb=1) == 1
    with pytest.raises(ValueError, match="memory_budget_mb"):
        query_chunk_size(10, memory_budget_mb=0)
    with pytest.raises(ValueError, match="num_gallery"):
        query_chunk_size(0)


def test_to_dict_keys():
    result = evaluate_distances(torch.tensor([[0.0, 1.0]]), [1], [0], [1, 2], [1, 1], max_rank=1)
    assert result.to_dict() == {
        "mAP": 1.0,
        "mINP": 1.0,
        "cmc": [1.0],
        "num_valid_queries": 1,
        "num_skipped_queries": 0,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distmat": torch.zeros(2, 4)}, r"distances must be \[num_queries, 3\]"),
        ({"distmat": torch.zeros(3, 3)}, "distances has 3 rows"),
        ({"distmat": torch.zeros(2, 3, dtype=torch.int64)}, "floating-point"),
        ({"distmat": torch.zeros(2, 3).fill_(float("nan"))}, "NaN"),
        ({"query_pids": [1]}, "query_pids and query_camids must have the same length"),
        ({"query_pids": [[1, 2]]}, "query_pids must be a 1-D"),
        ({"gallery_camids": [0, 1]}, "gallery_pids and gallery_camids"),
        ({"gallery_pids": [1.0, 2.0, 3.0]}, "gallery_pids must hold integers"),
        ({"max_rank": 0}, "max_rank"),
        ({"query_chunk": 0}, "query_chunk"),
        ({"gallery_pids": [5, 5, 5]}, "no valid query"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs: dict, message: str):
    arguments = {
        "distmat": torch.zeros(2, 3),
        "query_pids": [1, 2],
        "query_camids": [0, 0],
        "gallery_pids": [1, 2, 3],
        "gallery_camids": [1, 1, 1],
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate_distances(**arguments)


def test_evaluate_features_bad_inputs():
    labels = ([1], [0], [1, 2], [1, 1])
    with pytest.raises(ValueError, match="metric"):
        evaluate_features(torch.zeros(1, 4), torch.zeros(2, 4), *labels, metric="manhattan")
    with pytest.raises(ValueError, match="share D"):
        evaluate_features(torch.zeros(1, 4), torch.zeros(2, 5), *labels)
    with pytest.raises(ValueError, match="gallery_feats has 3 rows"):
        evaluate_features(torch.zeros(1, 4), torch.zeros(3, 4), *labels)
    with pytest.raises(ValueError, match="query_feats must be a 2-D"):
        evaluate_features(torch.zeros(4), torch.zeros(2, 4), *labels)
    with pytest.raises(ValueError, match="query_feats has 2 rows"):
        evaluate_features(torch.zeros(2, 4), torch.zeros(2, 4), *labels)
