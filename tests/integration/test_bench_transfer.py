"""benchmarks/bench_transfer.py: the summary against hand-worked numbers, and one real pair of fine-tuning
runs (random start, start from a saved backbone) on a tiny Market folder whose rows match the runs' files."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch

from benchmarks import bench_transfer as bench
from reidscale.models import create_backbone
from tests.support.tiny_market import write_tiny_market

pytestmark = pytest.mark.deepspeed


def _row(start: str, seed: int, after_map: float) -> dict:
    return {
        "start": start,
        "seed": seed,
        "after_mAP": f"{after_map:.2f}",
        "after_R1": "50.00",
        "after_mINP": "1",
    }


def test_summary_hand_worked() -> None:
    rows = [
        _row("random", 0, 60.0),
        _row("pretrained", 0, 80.0),
        _row("random", 1, 64.0),
        _row("pretrained", 1, 82.0),
    ]
    lines = bench.summary(rows)
    # random: mean 62, sample sd sqrt(((−2)² + 2²) / 1) = 2.83; pretrained: mean 81, sd 1.41
    assert lines[0].startswith("random     (2 seeds): mAP  62.00 ±  2.83")
    assert lines[1].startswith("pretrained (2 seeds): mAP  81.00 ±  1.41")
    assert lines[2] == "pre-trained − random, mAP per seed: +20.00, +18.00 (mean +19.00)"
    assert bench.summary([_row("random", 3, 50.0)]) == [
        "random     (1 seeds): mAP  50.00 ±  0.00  R1  50.00 ±  0.00  mINP   1.00 ±  0.00"
    ]


def test_map_curve_and_command() -> None:
    history = [
        {"step": 0, "eval/mAP": 0.1101},
        {"step": 25, "train/loss": 3.0},
        {"step": 50, "eval/mAP": 0.5},
    ]
    assert bench.map_curve(history) == "0:11.01;50:50.00"
    command = bench.finetune_command(Path("c.yaml"), Path("runs"), "pretrained_s1", 1, Path("w.pt"))
    assert command[-5:] == [
        "--run.output_dir=runs",
        "--run.name=pretrained_s1",
        "--run.seed=1",
        "--train.seed=1",
        "--model.weights=w.pt",
    ]
    assert not any("weights" in part for part in bench.finetune_command(Path("c"), Path("r"), "x", 0, None))


def test_missing_weights_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--weights", str(tmp_path / "none.pt")])
    err = capsys.readouterr().err
    assert "--weights" in err and "make demo" in err


@pytest.mark.slow
def test_a_pair_of_runs_writes_the_rows_of_their_results(tmp_path: Path) -> None:
    market = tmp_path / "market"
    write_tiny_market(market, num_train=8, num_test=6)
    config = tmp_path / "ft.yaml"
    config.write_text(
        f"""
run: {{name: unused, output_dir: {tmp_path / "unused"}}}
tracking: {{backends: [jsonl], progress: false}}
model: {{name: resnet18, img_size: [64, 32]}}
finetune: {{dataset: market1501, dataset_root: {market}, ids_per_batch: 4, images_per_id: 2}}
train: {{max_steps: 2, eval_every: 1, log_every: 1}}
"""
    )
    weights = tmp_path / "backbone.pt"
    torch.manual_seed(7)
    torch.save(create_backbone("resnet18", img_size=(64, 32)).state_dict(), weights)
    output = tmp_path / "transfer.csv"
    argv = ["--config", str(config), "--weights", str(weights), "--seeds", "0"]
    assert bench.main([*argv, "--runs-dir", str(tmp_path / "runs"), "--output", str(output)]) == 0

    rows = list(csv.DictReader(output.open()))
    assert [(row["start"], row["seed"]) for row in rows] == [("random", "0"), ("pretrained", "0")]
    for row in rows:
        results = json.loads((tmp_path / "runs" / f"{row['start']}_s0" / "results.json").read_text())
        assert row["steps"] == "2" and row["after_mAP"] == f"{100 * results['after']['mAP']:.2f}"
        assert row["before_R1"] == f"{100 * results['before']['R1']:.2f}"
        assert [int(point.split(":")[0]) for point in row["map_curve"].split(";")] == [0, 1, 2]
    assert rows[0]["weights_sha256"] == ""
    assert rows[1]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    # each run's resolved config names the start it was given
    for start, expected in (("random", "null"), ("pretrained", str(weights))):
        record = (tmp_path / "runs" / f"{start}_s0" / "finetune.config.yaml").read_text()
        assert f"weights: {expected}" in record
