"""World-size invariance: the same global batch on 1 rank and on 2 ranks (deepspeed launcher, CPU, gloo)
gives the same loss curve and weights at every ZeRO stage, with a BatchNorm model.

What makes it hold (README, "Changing the number of GPUs"): the global batch and the micro-batch (the
group over which BatchNorm statistics and batch-hard mining are computed) stay fixed; the gradient
accumulation steps absorb the change of world size. Tolerance: 1e-5 relative — only the order in which
the micro-batch gradients are summed differs (accumulation on one rank vs all-reduce across two).
BatchNorm running statistics are the exception: each rank averages the micro-batches it saw, so they are
estimates of the same statistics that differ with the world size (rank 0's are the ones saved).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from tests.support.processes import run_command
from tests.support.world_invariance import STAGES

pytestmark = [pytest.mark.multiproc, pytest.mark.deepspeed]
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "support" / "world_invariance.py"


@pytest.fixture
def runs(tmp_path_factory: pytest.TempPathFactory, free_port: int) -> Path:
    out = tmp_path_factory.mktemp("world")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    bin_dir = Path(sys.executable).parent
    commands = [
        [sys.executable, str(SCRIPT), str(out)],
        [
            str(bin_dir / "deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port),
            str(SCRIPT),
            str(out),
        ],
    ]
    for command in commands:
        done = run_command(command, env=env)
        assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_one_rank_and_two_ranks_train_identically(runs: Path, stage: int) -> None:
    single = torch.load(runs / f"z{stage}_world1_rank0.pt", weights_only=False)
    ranks = [torch.load(runs / f"z{stage}_world2_rank{r}.pt", weights_only=False) for r in (0, 1)]
    two_rank_curve = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"], strict=True)]
    assert len(single["losses"]) == len(two_rank_curve) > 0
    assert single["losses"] == pytest.approx(two_rank_curve, rel=1e-5)
    assert single["losses"][-1] < single["losses"][0]  # it did train
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    parameters = {n: v for n, v in single["weights"].items() if not n.endswith(buffers)}
    assert len(parameters) == 5  # Linear weight, BatchNorm weight and bias, Linear weight and bias
    for name, value in parameters.items():
        for rank in ranks:
            torch.testing.assert_close(rank["weights"][name], value, rtol=1e-5, atol=1e-6)
