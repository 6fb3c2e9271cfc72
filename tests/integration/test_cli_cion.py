"""``reidscale pretrain`` with ``pretrain.method: cion`` end to end on the tiny synthetic corpus (tracklets as
identities, crop cache, torch view stream): a run stopped in the first epoch and resumed by a fresh process
across the change of K ends with exactly the weights, centre and teacher master of the straight run; the
teacher's backbone is what it hands on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reidscale.models import create_backbone
from tests.support.processes import run_command

pytestmark = pytest.mark.deepspeed


def _config(tmp: Path, corpus: Path, name: str) -> Path:
    text = f"""
run: {{name: {name}, output_dir: {tmp / "runs"}, seed: 0}}
tracking: {{backends: [jsonl], progress: false}}
model: {{name: resnet18, img_size: [32, 16]}}
pretrain_data: {{source: video_tracklets, path: {corpus}, frame_stride: 8, max_per_tracklet: 4,
                cache_dir: {tmp / "cache"}, decode_backend: pyav}}
pretrain: {{method: cion, batch_size: 24, eval_dataset: null}}
cion: {{num_prototypes: 64, hidden_dim: 32, bottleneck_dim: 16, num_local: 2,
       k_schedule: [[0.0, 2], [0.5, 4]]}}
train: {{zero_stage: 0, epochs: 2, log_every: 1, optimizer: {{name: adamw, lr: 0.0005, weight_decay: 0.04}},
        schedule: {{weight_decay_end: 0.4, momentum_start: 0.9, momentum_end: 1.0}},
        clip: {{mode: per_param, value: 3.0}}, checkpoint: {{resume: auto}}}}
"""
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def _run(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "reidscale", "pretrain", "--config", str(config), *overrides]
    proc = run_command(args, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _final(run_dir: Path) -> dict:
    checkpoint = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    # one rank: the objective's extra state rides in DeepSpeed's client state
    state = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["objective"]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    losses = {row["step"]: row["train/distillation"] for row in metrics if "train/distillation" in row}
    return {
        "weights": torch.load(run_dir / "backbone.pt", weights_only=True),
        "state": state,
        "losses": losses,
    }


def test_a_cion_run_resumed_across_the_change_of_k_is_the_straight_run(
    tmp_path: Path, tiny_corpus: Path
) -> None:
    straight_config = _config(tmp_path, tiny_corpus, "straight")
    _run(straight_config)
    split_config = _config(tmp_path, tiny_corpus, "split")
    first = _run(split_config, "--pretrain.until_step=2")
    assert "stopped by until_step after 2 steps" in first.stdout
    _run(split_config)
    straight, split = _final(tmp_path / "runs" / "straight"), _final(tmp_path / "runs" / "split")
    steps = json.loads((tmp_path / "runs" / "straight" / "results.json").read_text())["steps"]
    assert steps >= 4 and sorted(straight["losses"]) == list(range(1, steps + 1))
    assert split["losses"] == straight["losses"]
    for key, value in straight["weights"].items():
        assert torch.equal(split["weights"][key], value), key
    assert torch.equal(split["state"]["center"], straight["state"]["center"])
    assert all(
        torch.equal(a, b) for a, b in zip(split["state"]["master"], straight["state"]["master"], strict=True)
    )
    backbone = create_backbone("resnet18")
    backbone.load_state_dict(straight["weights"])  # the teacher's backbone, loadable as a plain backbone
