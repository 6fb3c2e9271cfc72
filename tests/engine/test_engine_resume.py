"""Exact resume on 2 CPU ranks: 6 steps straight vs 3 steps, stop, a fresh process resuming, 3 more steps.

The toy uses dropout, random-noise augmentation (torch RNG in the dataset), python and numpy draws in the
loss, an IdentitySampler (data position), an EMA teacher and rank-specific objective state, so every
piece of the checkpoint matters. ZeRO 0 stops on a real SIGTERM sent to rank 1 only; ZeRO 3 stops through
``run(until_step=3)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.engine_toy import launch

pytestmark = [pytest.mark.multiproc, pytest.mark.deepspeed]
RUNS = ("resume_z0", "resume_z3")


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("engine_resume")
    for phase in ("straight", "first", "second"):
        done = launch(f"resume_{phase}", out)
        assert done.returncode == 0, f"{phase}: {done.stdout[-4000:]}"  # SIGTERM included: exit 0
    return out


def _load(out: Path, name: str, phase: str, rank: int) -> dict:
    return torch.load(out / f"{name}_{phase}_rank{rank}.pt", weights_only=False)


@pytest.mark.parametrize("name", RUNS)
@pytest.mark.parametrize("rank", [0, 1])
def test_resumed_run_equals_straight_run(resume_runs: Path, name: str, rank: int) -> None:
    straight = _load(resume_runs, name, "straight", rank)
    first = _load(resume_runs, name, "first", rank)
    second = _load(resume_runs, name, "second", rank)
    assert len(straight["losses"]) == 6 and first["steps"] == 3 and second["steps"] == 6
    assert first["losses"] + second["losses"] == straight["losses"]  # bit-identical on the CPU
    for part in ("weights", "teacher"):
        for key, value in straight[part].items():
            assert torch.equal(second[part][key], value), f"{part}.{key}"
    assert second["extra_state"]["seen_steps"] == 6
    assert torch.equal(second["extra_state"]["running"], straight["extra_state"]["running"])


def test_ranks_differ_so_per_rank_state_is_exercised(resume_runs: Path) -> None:
    rank0 = _load(resume_runs, "resume_z0", "straight", 0)
    rank1 = _load(resume_runs, "resume_z0", "straight", 1)
    assert rank0["losses"] != rank1["losses"]
    assert not torch.equal(rank0["extra_state"]["running"], rank1["extra_state"]["running"])


def test_sigterm_on_one_rank_checkpoints_all_and_exits_cleanly(resume_runs: Path) -> None:
    for rank in (0, 1):
        first = _load(resume_runs, "resume_z0", "first", rank)
        assert first["preempted"] and first["steps"] == 3
    assert not _load(resume_runs, "resume_z3", "first", 0)["preempted"]
    folder = resume_runs / "resume_z0_split" / "ckpt_resume_z0"
    assert sorted(p.name for p in folder.glob("step_*")) == ["step_00000003", "step_00000006"]
    assert sorted(p.name for p in (folder / "step_00000003").glob("rank*.pt")) == [
        "rank00000.pt",
        "rank00001.pt",
    ]
    assert (folder / "latest").read_text().strip() == "step_00000006"
    assert not list(folder.glob(".partial_*"))
