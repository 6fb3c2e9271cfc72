"""World-size invariance: the same global batch on 1 rank and on 2 ranks (deepspeed launcher, CPU, gloo)
gives the same loss curve and weights at every ZeRO stage, with a BatchNorm model; and CION's
self-distillation (student, EMA teacher, centre) gives the same losses, student, teacher and centre at ZeRO 0
to 3 across a change of K, its prototype layer frozen in the first epoch (tests/support/cion_world.py says
why its toy has no BatchNorm).

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

from tests.support import cion_world
from tests.support.ports import free_port
from tests.support.processes import run_command
from tests.support.world_invariance import STAGES

pytestmark = [pytest.mark.multiproc, pytest.mark.deepspeed]
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "support" / "world_invariance.py"


def one_and_two_ranks(script: Path, out: Path) -> Path:
    """Run ``script OUT`` in one process, then on 2 CPU ranks with the deepspeed launcher."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    bin_dir = Path(sys.executable).parent
    commands = [
        [sys.executable, str(script), str(out)],
        [
            str(bin_dir / "deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            str(script),
            str(out),
        ],
    ]
    for command in commands:
        done = run_command(command, env=env)
        assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:  # once for all stages
    return one_and_two_ranks(SCRIPT, tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def cion_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return one_and_two_ranks(Path(cion_world.__file__), tmp_path_factory.mktemp("cion_world"))


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


@pytest.mark.parametrize("stage", cion_world.STAGES)
def test_cion_on_one_rank_and_on_two_ranks_is_the_same_run(cion_runs: Path, stage: int) -> None:
    single = torch.load(cion_runs / f"z{stage}_world1_rank0.pt", weights_only=True)
    ranks = [torch.load(cion_runs / f"z{stage}_world2_rank{r}.pt", weights_only=True) for r in (0, 1)]
    two_rank_curve = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"], strict=True)]
    assert len(single["losses"]) == cion_world.STEPS
    assert single["losses"] == pytest.approx(two_rank_curve, rel=1e-5)
    fc = "backbone.fc.weight"
    assert single["center"].abs().sum() > 0 and not torch.equal(single["student"][fc], single["teacher"][fc])
    directions = single["directions"]  # before training, then after steps 0-3; epoch 0 = steps 0 and 1
    assert len(directions) == cion_world.STEPS + 1
    for frozen in directions[1:3]:  # AdamW's weight decay scales all rows alike: the directions stay
        torch.testing.assert_close(frozen, directions[0], rtol=0, atol=1e-6)
    assert (directions[3] - directions[0]).abs().max() > 1e-4  # trains from epoch 1
    for rank in ranks:
        torch.testing.assert_close(rank["center"], single["center"], rtol=1e-5, atol=1e-7)
        for network in ("student", "teacher"):
            assert rank[network].keys() == single[network].keys()
            for name, value in single[network].items():
                torch.testing.assert_close(rank[network][name], value, rtol=1e-5, atol=1e-6, msg=name)
