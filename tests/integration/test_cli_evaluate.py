"""`reidscale evaluate` end to end: results.json equals the per-query reference loop; run records; errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from reidscale.cli import main
from reidscale.evaluation.features import FeatureSet, save_feature_file
from reidscale.evaluation.rerank import rerank_distances
from reidscale.neighbours.distance import pairwise_distance
from tests.support.reference.eval_loop import eval_loop


def clustered_features(seed: int = 0, num_ids: int = 12, dim: int = 16) -> FeatureSet:
    """Identities as noisy clusters: each id has 1–2 queries and 2–6 gallery images over 3 cameras."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, dim, generator=gen)
    rows: dict[str, list] = {k: [] for k in ("qf", "qp", "qc", "gf", "gp", "gc")}
    for pid in range(1, num_ids + 1):
        for split, count in (("q", 1 + pid % 2), ("g", 2 + pid % 5)):
            cams = torch.randint(0, 3, (count,), generator=gen)
            feats = centres[pid - 1] + 0.8 * torch.randn(count, dim, generator=gen)
            rows[f"{split}f"].append(feats)
            rows[f"{split}p"] += [pid] * count
            rows[f"{split}c"] += cams.tolist()
    rows["gf"].append(torch.randn(4, dim, generator=gen))  # distractors
    rows["gp"] += [0] * 4
    rows["gc"] += [0, 1, 2, 0]
    return FeatureSet(
        query_feats=torch.cat(rows["qf"]),
        gallery_feats=torch.cat(rows["gf"]),
        query_pids=torch.tensor(rows["qp"]),
        query_camids=torch.tensor(rows["qc"]),
        gallery_pids=torch.tensor(rows["gp"]),
        gallery_camids=torch.tensor(rows["gc"]),
    )


def reference(features: FeatureSet, distmat: torch.Tensor) -> dict:
    return eval_loop(
        distmat.double().numpy(),
        features.query_pids.numpy(),
        features.query_camids.numpy(),
        features.gallery_pids.numpy(),
        features.gallery_camids.numpy(),
        max_rank=50,
    )


def assert_matches_reference(result: dict, expected: dict) -> None:
    assert result["num_valid_queries"] == expected["num_valid_queries"]
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert result["mINP"] == pytest.approx(expected["mINP"], abs=1e-6)
    assert np.allclose(result["cmc"], expected["cmc"], atol=1e-6, rtol=0)
    assert len(result["cmc"]) == 50


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_evaluate_writes_reference_metrics_and_run_record(tmp_path: Path, suffix: str, capsys) -> None:
    features = clustered_features()
    feats_file = save_feature_file(tmp_path / f"feats{suffix}", features)
    out = tmp_path / "out" / "results.json"
    code = main(["evaluate", "--features", str(feats_file), "--output", str(out), "--eval.query_chunk", "5"])
    assert code == 0
    result = json.loads(out.read_text())
    assert_matches_reference(
        result, reference(features, pairwise_distance(features.query_feats, features.gallery_feats))
    )
    assert 0.0 < result["mAP"] < 1.0
    printed = capsys.readouterr().out
    assert "mAP |" in printed and f"{100 * result['mAP']:.2f}" in printed
    assert yaml.safe_load((out.parent / "results.config.yaml").read_text())["eval"]["query_chunk"] == 5
    run_info = json.loads((out.parent / "results.run.json").read_text())
    assert "git_commit" in run_info and run_info["versions"]["torch"]
    logged = [json.loads(line) for line in (out.parent / "results.metrics.jsonl").read_text().splitlines()]
    assert any(row.get("eval/mAP") == result["mAP"] for row in logged)


def test_evaluate_euclidean_with_rerank_matches_reference(tmp_path: Path) -> None:
    features = clustered_features(seed=3)
    feats_file = save_feature_file(tmp_path / "feats.pt", features)
    out = tmp_path / "rr.json"
    args = [
        "evaluate",
        "--features",
        str(feats_file),
        "--output",
        str(out),
        "--rerank",
        "--eval.metric",
        "euclidean",
        "--eval.rerank.k1",
        "6",
        "--eval.rerank.k2",
        "3",
        "--tracking.backends",
        "[jsonl]",
    ]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["rerank"] is True
    normalize = lambda x: torch.nn.functional.normalize(x, dim=1)  # noqa: E731
    distmat = rerank_distances(
        normalize(features.query_feats),
        normalize(features.gallery_feats),
        k1=6,
        k2=3,
        metric="euclidean",
        knn_backend="torch",
    )
    assert_matches_reference(result, reference(features, distmat))


def features_with_images(folder: Path, num_ids: int = 6) -> FeatureSet:
    """clustered_features with a small PNG written for every query and gallery item."""
    features = clustered_features(num_ids=num_ids)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("query", features.num_query), ("gallery", features.num_gallery)):
        paths = []
        for i in range(count):
            path = folder / f"{split}_{i}.png"
            Image.new("RGB", (32, 64), (i * 7 % 255, 90, 160)).save(path)
            paths.append(str(path))
        setattr(features, f"{split}_paths", paths)
    return features


def test_evaluate_draws_rank_lists(tmp_path: Path) -> None:
    feats_file = save_feature_file(tmp_path / "feats.pt", features_with_images(tmp_path))
    out = tmp_path / "vis" / "results.json"
    assert main(["evaluate", "--features", str(feats_file), "--output", str(out), "--visualize", "3"]) == 0
    with Image.open(out.parent / "results.ranklist.png") as png:
        assert png.width > png.height > 0


def test_evaluate_errors_name_the_problem(tmp_path: Path, capsys) -> None:
    features = clustered_features()
    features.query_feats[2, 1] = float("nan")
    feats_file = save_feature_file(tmp_path / "nan.pt", features)
    assert main(["evaluate", "--features", str(feats_file), "--output", str(tmp_path / "r.json")]) == 2
    assert "'query_feats' has 1 NaN/inf values" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
    assert main(["evaluate", "--features", str(feats_file), "--output", "r.json", "--eval.metirc", "x"]) == 2
    assert "did you mean 'eval.metric'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--features", str(feats_file), "--output", "r.json", "--bogus"])


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative name → content), hidden temporary files included."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_failed_evaluate_leaves_earlier_files_byte_identical(tmp_path: Path, capsys) -> None:
    good = save_feature_file(tmp_path / "good.pt", features_with_images(tmp_path / "images"))
    out = tmp_path / "out" / "results.json"
    assert main(["evaluate", "--features", str(good), "--output", str(out), "--visualize", "3"]) == 0
    before = folder_bytes(out.parent)
    assert set(before) == {
        "results.json",
        "results.config.yaml",
        "results.run.json",
        "results.metrics.jsonl",
        "results.ranklist.png",
    }
    capsys.readouterr()

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    no_paths = save_feature_file(tmp_path / "no_paths.pt", clustered_features(seed=1))
    missing_images = features_with_images(tmp_path / "gone")
    missing_images.gallery_paths = [
        str(tmp_path / "gone" / f"missing_{i}.png") for i in range(missing_images.num_gallery)
    ]
    missing = save_feature_file(tmp_path / "missing.pt", missing_images)
    failures = [
        (corrupt, ["--visualize", "3"], f"feature file {corrupt} could not be read"),
        (no_paths, ["--visualize", "3"], "needs 'query_paths' and 'gallery_paths'"),
        (missing, ["--visualize", "3"], "image file not found: " + str(tmp_path / "gone" / "missing_")),
        (good, ["--visualize", "3", "--eval.max_rank", "0"], "max_rank"),
    ]
    for features_file, extra, message in failures:
        code = main(["evaluate", "--features", str(features_file), "--output", str(out), *extra])
        captured = capsys.readouterr()
        assert code == 2, (features_file, extra)
        assert message in captured.err
        assert "results written" not in captured.out
        assert folder_bytes(out.parent) == before, (features_file, extra)
