"""The test-time camera term (``eval.camera_penalty``): off by default, exact when on, recorded in results."""

from __future__ import annotations

import torch

from reidscale.evaluation.config import EvalConfig
from reidscale.evaluation.evaluator import evaluate_feature_set, iter_query_distances, results_payload
from reidscale.evaluation.features import FeatureSet


def _features() -> FeatureSet:
    # query 0 (pid 1, cam 0); gallery: same pid in cam 1 at distance 0.3, an impostor in cam 2 at 0.2
    # (cosine distance 1 − cos), so without the term the impostor ranks first
    query = torch.tensor([[1.0, 0.0]])
    angles = torch.tensor([0.7953988, 0.6435011])  # cos = 0.7, 0.8
    gallery = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return FeatureSet(
        query_feats=query,
        gallery_feats=gallery,
        query_pids=torch.tensor([1]),
        query_camids=torch.tensor([0]),
        gallery_pids=torch.tensor([1, 2]),
        gallery_camids=torch.tensor([1, 0]),
    )


def test_camera_penalty_is_off_by_default_and_added_to_same_camera_pairs() -> None:
    features = _features()
    assert EvalConfig().camera_penalty == 0.0
    plain = torch.cat([d for _, d in iter_query_distances(features, EvalConfig(device="cpu"))])
    torch.testing.assert_close(plain, torch.tensor([[0.3, 0.2]]), rtol=0, atol=1e-6)
    config = EvalConfig(device="cpu", camera_penalty=0.25)
    penalised = torch.cat([d for _, d in iter_query_distances(features, config)])
    torch.testing.assert_close(penalised, torch.tensor([[0.3, 0.45]]), rtol=0, atol=1e-6)  # impostor: cam 0
    assert evaluate_feature_set(features, EvalConfig(device="cpu")).mAP == 0.5  # true match at rank 2
    metrics = evaluate_feature_set(features, config)
    assert metrics.mAP == 1.0  # the term moved the impostor behind the true match
    assert results_payload(metrics, config)["camera_penalty"] == 0.25
