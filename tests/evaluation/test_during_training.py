"""``SplitEvaluator``: the evaluation of a training run equals a direct extraction + evaluation, and keeps
the history the job writes (resumed runs put their earlier evaluations in front)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from reidscale.data.datasets import load_dataset
from reidscale.evaluation.config import EvalConfig
from reidscale.evaluation.during_training import SplitEvaluator
from reidscale.evaluation.evaluator import evaluate_feature_set
from reidscale.evaluation.extract import extract_features
from tests.support.tiny_market import TinyBackbone, write_tiny_market


class Holder:
    """A stand-in objective: all the evaluator asks of one is ``feature_model()``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def feature_model(self) -> nn.Module:
        return self.model


def test_metrics_equal_a_direct_evaluation_and_the_history_is_kept(tmp_path: Path) -> None:
    write_tiny_market(tmp_path, num_train=2, num_test=5)
    torch.manual_seed(0)
    model = TinyBackbone().eval()
    config = EvalConfig(device="cpu")
    evaluator = SplitEvaluator("market1501", str(tmp_path), (32, 16), False, config)
    assert evaluator.latest_metrics == {} and evaluator.latest_step is None
    metrics = evaluator(Holder(model), 7)
    direct = evaluate_feature_set(
        extract_features(model, load_dataset("market1501", tmp_path), 64, "cpu", height=32, width=16), config
    )
    assert metrics["mAP"] == direct.mAP and metrics["mINP"] == direct.mINP and metrics["R1"] == direct.cmc[0]
    assert evaluator.latest_step == 7 and evaluator.latest_metrics == metrics
    assert torch.equal(evaluator.latest_features.query_feats, direct_features(model, tmp_path))
    evaluator.restore([{"step": 0, "mAP": 0.1}, {"step": 3, "mAP": 0.2}])
    assert [entry["step"] for entry in evaluator.history] == [0, 3, 7]
    assert evaluator.latest_metrics == metrics  # the latest is still this run's


def direct_features(model: nn.Module, root: Path) -> torch.Tensor:
    split = load_dataset("market1501", root)
    return extract_features(model, split, 64, "cpu", height=32, width=16).query_feats
