"""Faults a user meets, each run as a user would on the CPU: a signal mid-run and its resume.

SIGTERM (what a scheduler sends before pre-emption) to ``reidscale finetune`` after its first logged step:
the run stops at the next step boundary with a checkpoint, exits 128 + 15, and its ``results.json`` says
``stopped`` with no final weights; resumed with ``train.checkpoint.resume=auto`` it ends with exactly the
metrics and weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support.processes import HANG_GUARD_S, run_command
from tests.support.run_configs import finetune_run_config
from tests.support.tiny_market import write_tiny_market

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("market")
    write_tiny_market(root, num_train=12, num_test=10)
    return root


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "reidscale", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _logged_a_step(metrics: Path) -> bool:
    return metrics.is_file() and '"train/loss"' in metrics.read_text(encoding="utf-8")


def test_sigterm_stops_with_a_checkpoint_and_resuming_ends_as_an_uninterrupted_run(
    tmp_path: Path, market: Path
) -> None:
    straight = finetune_run_config(tmp_path, market, "straight")
    done = run_command(_cli("finetune", "--config", str(straight)), env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]

    config = finetune_run_config(tmp_path, market, "stopped")
    run_dir = tmp_path / "runs" / "stopped"
    process = subprocess.Popen(
        _cli("finetune", "--config", str(config)),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        guard = time.monotonic() + HANG_GUARD_S  # only a hang guard: the test waits for the event itself
        while not _logged_a_step(run_dir / "metrics.jsonl"):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < guard, "no training step was logged"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=HANG_GUARD_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM after" in out
    stopped = json.loads((run_dir / "results.json").read_text())
    assert stopped["status"] == "stopped" and stopped["stopped_by"] == "SIGTERM"
    assert 10 <= stopped["steps"] < stopped["total_steps"] == 30 and Path(stopped["checkpoint"]).is_dir()
    assert not (run_dir / "backbone.pt").exists()  # no final weights under the final name

    resumed = run_command(
        _cli("finetune", "--config", str(config), "--train.checkpoint.resume", "auto"), env=ENV
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads((run_dir / "results.json").read_text())
    reference = json.loads((tmp_path / "runs" / "straight" / "results.json").read_text())
    assert final["status"] == "completed" and final["steps"] == 30
    assert final["before"] == reference["before"] and final["after"] == reference["after"]
    ours = torch.load(run_dir / "backbone.pt", weights_only=True)
    theirs = torch.load(tmp_path / "runs" / "straight" / "backbone.pt", weights_only=True)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
