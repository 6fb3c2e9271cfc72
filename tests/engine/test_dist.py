"""Rank / world size from the launcher's environment (torch.distributed not initialised)."""

from __future__ import annotations

import pytest

from reidscale.utils.dist import get_rank, get_world_size

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)


def test_single_process_defaults() -> None:
    assert (get_rank(), get_world_size()) == (0, 1)


def test_torchrun_and_deepspeed_variables_win_over_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert (get_rank(), get_world_size()) == (5, 8)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (get_rank(), get_world_size()) == (2, 4)


def test_malformed_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match=r"RANK='zero' is not an integer"):
        get_rank()
