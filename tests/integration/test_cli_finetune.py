"""``reidscale finetune`` / ``extract`` / ``export`` end to end on a tiny synthetic Market folder.

One process: fine-tuning raises the test mAP well above the untrained model; ``extract`` with the written
weights reproduces the features whose mAP ``evaluate`` then reports; ``export`` writes a checked ONNX.
Two processes (torchrun, gloo, ZeRO-2): the same command runs on both ranks and rank 0 writes the results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.processes import reidscale_cli, run_command
from tests.support.run_configs import finetune_run_config

pytestmark = pytest.mark.deepspeed

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    proc = run_command(args, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_finetune_extract_evaluate_export(tmp_path: Path, tiny_market: Path) -> None:
    config = finetune_run_config(tmp_path, tiny_market, "single")
    out = _run(reidscale_cli("finetune", "--config", str(config))).stdout
    assert "fine-tuned resnet18 for 30 steps" in out
    run_dir = tmp_path / "runs" / "single"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 30
    assert results["after"]["mAP"] > results["before"]["mAP"] + 0.15, results
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {key for row in rows for key in row}
    assert {"train/loss", "train/ce", "train/triplet", "throughput/images_per_s", "eval/mAP"} <= logged
    assert not (run_dir / ".reidscale.lock").exists()  # released at the end of the run
    again = run_command(reidscale_cli("finetune", "--config", str(config)))
    assert again.returncode == 2, again.stderr
    assert f"{run_dir} holds a finished run (results.json, metrics.jsonl, checkpoints/)" in again.stderr
    assert json.loads((run_dir / "results.json").read_text()) == results  # the finished run is untouched

    features = tmp_path / "extracted.pt"
    weights = run_dir / "backbone.pt"
    _run(
        reidscale_cli(
            "extract", "--config", str(config), "--weights", str(weights), "--output", str(features)
        )
    )
    written = torch.load(run_dir / "features.pt", weights_only=False)
    extracted = torch.load(features, weights_only=False)
    torch.testing.assert_close(extracted["query_feats"], written["query_feats"], rtol=1e-4, atol=1e-5)
    evaluated = tmp_path / "evaluated.json"
    _run(reidscale_cli("evaluate", "--features", str(features), "--output", str(evaluated)))
    assert json.loads(evaluated.read_text())["mAP"] == pytest.approx(results["after"]["mAP"], abs=1e-4)

    exported = tmp_path / "export"
    report = json.loads(
        _run(
            reidscale_cli(
                "export", "--config", str(config), "--weights", str(weights), "--out", str(exported)
            )
        ).stdout
    )
    assert (exported / "backbone.onnx").is_file() and float(report["max_abs_diff"]) < 1e-3


def test_extract_rejects_weights_of_another_model(tmp_path: Path, tiny_market: Path) -> None:
    config = finetune_run_config(tmp_path, tiny_market, "wrong")
    weights = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, weights)
    proc = run_command(
        reidscale_cli(
            "extract", "--config", str(config), "--weights", str(weights), "--output", str(tmp_path / "f.pt")
        )
    )
    assert proc.returncode == 2, proc.stderr
    assert f"model.weights: {weights}: the weights do not fit backbone 'resnet18'" in proc.stderr
    assert "unexpected (1): conv.weight" in proc.stderr


@pytest.mark.multiproc
def test_finetune_two_ranks_zero2(tmp_path: Path, tiny_market: Path) -> None:
    config = finetune_run_config(tmp_path, tiny_market, "two_ranks", zero_stage=2)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun not found beside the interpreter"
    _run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "reidscale",
            "finetune",
            "--config",
            str(config),
        ]
    )
    results = json.loads((tmp_path / "runs" / "two_ranks" / "results.json").read_text())
    assert results["steps"] == 30 and results["after"]["mAP"] > results["before"]["mAP"] + 0.1, results


def test_finetune_derives_its_batch_and_rejects_uneven_identities_or_a_set_micro_batch(
    tmp_path: Path, tiny_market: Path
) -> None:
    from reidscale.config import load_config
    from reidscale.jobs.roots import root_for
    from reidscale.jobs.train import train_settings
    from reidscale.methods import method_spec

    config = load_config(root_for("finetune"), finetune_run_config(tmp_path, tiny_market, "checks"), [])
    spec = method_spec("finetune", config.finetune.method)
    assert train_settings(spec, config, 2, 1).micro_batch == 8  # 4 ids / 2 ranks × 4 images
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        train_settings(spec, config, 3, 1)
    config.train.grad_accumulation = 2
    with pytest.raises(ValueError, match=r"train.grad_accumulation is set to 2, but finetune derives it"):
        train_settings(spec, config, 1, 1)
    config.train.grad_accumulation, config.train.micro_batch = None, 16
    with pytest.raises(ValueError, match=r"train.micro_batch is set to 16, but finetune derives it \(from"):
        train_settings(spec, config, 1, 1)
