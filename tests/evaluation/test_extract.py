"""Feature extraction: features equal a hand-written PIL → tensor → model pass; flip averaging; the written
file is accepted by ``python -m reidscale evaluate``."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidscale.data.datasets import ReidDataset, load_dataset
from reidscale.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from reidscale.evaluation.config import EvalConfig
from reidscale.evaluation.evaluator import evaluate_feature_set
from reidscale.evaluation.extract import extract_features, extract_to_file
from reidscale.evaluation.features import load_feature_file
from tests.support.processes import run_command
from tests.support.tiny_market import TinyBackbone, write_tiny_market

REPO = Path(__file__).resolve().parents[2]
SIZE = {"height": 32, "width": 16}


@pytest.fixture(scope="module")
def market_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("market")
    write_tiny_market(root, num_train=2, num_test=4)
    return root


@pytest.fixture
def model() -> TinyBackbone:
    torch.manual_seed(0)
    net = TinyBackbone()
    # non-trivial running statistics, so that train-mode and eval-mode outputs differ
    net.train()
    with torch.no_grad():
        net(torch.randn(16, 3, 32, 16) * 3 + 1)
    return net


def manual_features(net: torch.nn.Module, paths: list[str], mirror: bool = False) -> torch.Tensor:
    """One image at a time: PIL bilinear resize, /255, ImageNet normalisation, eval-mode forward.  [N, D]"""
    net = net.eval()
    rows = []
    for path in paths:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((SIZE["width"], SIZE["height"]), Image.BILINEAR)
        if mirror:
            rgb = rgb.transpose(Image.FLIP_LEFT_RIGHT)
        array = (np.asarray(rgb, np.float32) / 255 - np.array(IMAGENET_MEAN, np.float32)) / np.array(
            IMAGENET_STD, np.float32
        )
        with torch.no_grad():
            rows.append(net(torch.from_numpy(array).permute(2, 0, 1)[None])[0])
    return torch.stack(rows)


def test_features_and_labels_match_a_manual_pass(market_root, model):
    split = load_dataset("market1501", market_root)
    model.train()
    features = extract_features(model, split, batch_size=5, device="cpu", **SIZE)
    assert model.training, "extract_features must restore the model's train mode"
    query_paths = [r.path for r in split.query]
    gallery_paths = [r.path for r in split.gallery]
    assert features.query_paths == query_paths and features.gallery_paths == gallery_paths
    assert features.query_pids.tolist() == [r.pid for r in split.query]
    assert features.gallery_camids.tolist() == [r.camid for r in split.gallery]
    assert 0 in features.gallery_pids.tolist()
    torch.testing.assert_close(
        features.query_feats, manual_features(model, query_paths), atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(
        features.gallery_feats, manual_features(model, gallery_paths), atol=1e-5, rtol=1e-4
    )


def test_flip_averages_image_and_mirror(market_root, model):
    split = load_dataset("market1501", market_root)
    features = extract_features(model, split, batch_size=64, device="cpu", flip=True, **SIZE)
    paths = [r.path for r in split.query]
    expected = (manual_features(model, paths) + manual_features(model, paths, mirror=True)) / 2
    torch.testing.assert_close(features.query_feats, expected, atol=1e-5, rtol=1e-4)
    plain = extract_features(model, split, batch_size=64, device="cpu", **SIZE)
    assert not torch.allclose(features.query_feats, plain.query_feats)


def test_bf16_model_gets_bf16_input_and_float32_features(market_root, model):
    split = load_dataset("market1501", market_root)
    exact = extract_features(model, split, batch_size=64, device="cpu", **SIZE)
    low = extract_features(copy.deepcopy(model).bfloat16(), split, batch_size=64, device="cpu", **SIZE)
    assert low.query_feats.dtype == torch.float32
    torch.testing.assert_close(low.query_feats, exact.query_feats, atol=0.05, rtol=0.05)


def test_written_file_is_accepted_by_reidscale_evaluate(market_root, model, tmp_path):
    feature_file = extract_to_file(
        model, "market1501", market_root, tmp_path / "feats.pt", batch_size=8, device="cpu", **SIZE
    )
    loaded = load_feature_file(feature_file)
    expected = evaluate_feature_set(loaded, EvalConfig(device="cpu"))
    output = tmp_path / "eval" / "results.json"
    command = [sys.executable, "-m", "reidscale", "evaluate", "--features", str(feature_file)]
    command += ["--output", str(output), "--tracking.backends", '["jsonl"]', "--eval.device", "cpu"]
    done = run_command(command, cwd=REPO)
    assert done.returncode == 0, done.stderr
    results = json.loads(output.read_text())
    assert results["mAP"] == pytest.approx(expected.mAP, abs=1e-6)
    assert results["num_valid_queries"] == 4


def test_bad_arguments_are_named(market_root, model, tmp_path):
    split = load_dataset("market1501", market_root)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(model, split, batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="output"):
        extract_to_file(model, "market1501", market_root, tmp_path / "feats.txt", 4, "cpu")
    with pytest.raises(ValueError, match="query and gallery"):
        extract_features(model, ReidDataset("empty", str(market_root), query=split.query), 4, "cpu")
