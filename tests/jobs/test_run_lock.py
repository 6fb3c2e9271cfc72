"""The run folder's lock (one writer) and the refusal of a fresh run into an earlier run's folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.distributed

from reidscale.jobs.run_lock import (
    LOCK_NAME,
    acquire_run_lock,
    check_fresh_run_folder,
    claim_run_folder,
    release_run_lock,
    run_lock,
)
from tests.support.gloo_ranks import run_on_two_ranks


def _write_lock(run_dir: Path, host: str, pid: int, started: str = "2020-01-02T03:04:05Z") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    path.write_text(json.dumps({"host": host, "pid": pid, "started": started}))
    return path


def _dead_pid() -> int:
    """The pid of a process that has exited and been waited for (so no process has it right now)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_lock_is_created_with_host_pid_and_start_time_and_removed_on_release(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "a"  # created when missing
    lock_path = acquire_run_lock(run_dir)
    assert lock_path == run_dir / LOCK_NAME
    holder = json.loads(lock_path.read_text())
    assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
    assert holder["started"].endswith("Z") and "T" in holder["started"]
    release_run_lock(lock_path)
    assert not lock_path.exists()


def test_second_take_is_refused_naming_the_folder_and_the_holder(tmp_path: Path) -> None:
    _write_lock(tmp_path, socket.gethostname(), os.getpid(), "2021-05-06T07:08:09Z")
    with pytest.raises(ValueError) as refused:
        acquire_run_lock(tmp_path)
    message = str(refused.value)
    assert f"another run is writing into {tmp_path}" in message
    assert f"host {socket.gethostname()}, pid {os.getpid()}, started 2021-05-06T07:08:09Z" in message
    assert (tmp_path / LOCK_NAME).is_file()  # the holder's lock is left alone


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dead = _dead_pid()
    _write_lock(tmp_path, socket.gethostname(), dead)
    lock_path = acquire_run_lock(tmp_path)
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert "taking over the stale lock" in err and f"pid {dead}," in err
    release_run_lock(lock_path)


def test_lock_of_another_host_is_never_taken_over(tmp_path: Path) -> None:
    _write_lock(tmp_path, "some-other-node", _dead_pid())
    with pytest.raises(ValueError, match="host some-other-node"):
        acquire_run_lock(tmp_path)


def test_unreadable_lock_file_is_refused_with_the_way_out(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("")
    with pytest.raises(ValueError, match="remove the file and start again"):
        acquire_run_lock(tmp_path)


def test_lock_is_released_on_an_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), run_lock(tmp_path) as lock_path:
        assert lock_path.is_file()
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()


def test_release_keeps_a_lock_another_process_holds(tmp_path: Path) -> None:
    lock_path = _write_lock(tmp_path, socket.gethostname(), os.getpid() + 1)
    release_run_lock(lock_path)
    assert lock_path.is_file()


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["results.json", "metrics.jsonl"], r"holds a finished run \(results.json, metrics.jsonl\)"),
        (["metrics.jsonl"], r"holds an earlier run \(metrics.jsonl\)"),
        (["checkpoints/global_step3/x"], r"holds an earlier run \(checkpoints/\)"),
    ],
)
def test_fresh_run_into_an_earlier_runs_folder_is_refused(
    tmp_path: Path, files: list[str], expected: str
) -> None:
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    metrics, checkpoints = tmp_path / "metrics.jsonl", tmp_path / "checkpoints"
    with pytest.raises(ValueError, match=expected) as refused:
        check_fresh_run_folder(tmp_path, None, metrics, checkpoints)
    assert str(refused.value).startswith(f"{tmp_path} holds")
    assert "choose another run.name, or set train.checkpoint.resume=auto to continue it" in str(refused.value)
    check_fresh_run_folder(tmp_path, "auto", metrics, checkpoints)  # resuming that folder is allowed


def test_fresh_run_into_a_folder_without_earlier_run_files_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()  # empty: nothing saved yet
    (tmp_path / "finetune.config.yaml").write_text("run: {}")
    check_fresh_run_folder(tmp_path, None, tmp_path / "metrics.jsonl", tmp_path / "checkpoints")


def test_metrics_file_outside_the_folder_counts_with_its_full_path(tmp_path: Path) -> None:
    shared = tmp_path / "elsewhere" / "all.jsonl"
    shared.parent.mkdir()
    shared.write_text("{}\n")
    with pytest.raises(ValueError, match=f"an earlier run \\({shared}\\)"):
        check_fresh_run_folder(tmp_path / "run", None, shared, tmp_path / "run" / "checkpoints")


def _config(output_dir: Path, name: str, resume: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        run=SimpleNamespace(output_dir=str(output_dir), name=name),
        tracking=SimpleNamespace(jsonl_path=None),
        train=SimpleNamespace(checkpoint=SimpleNamespace(dir=None, resume=resume)),
    )


def test_claim_holds_the_lock_inside_the_block_and_releases_it_on_refusal(tmp_path: Path) -> None:
    with claim_run_folder(_config(tmp_path, "a")) as run_dir:
        assert run_dir == tmp_path / "a" and (run_dir / LOCK_NAME).is_file()
    assert not run_dir.exists()  # nothing was written: the folder the claim created is gone again
    run_dir.mkdir()
    (run_dir / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="holds a finished run"), claim_run_folder(_config(tmp_path, "a")):
        pass
    assert sorted(path.name for path in run_dir.iterdir()) == ["results.json"]  # the lock went, the run stays
    with claim_run_folder(_config(tmp_path, "a", resume="auto")):
        pass


def _claim_on_rank(output_dir: Path, rank: int, world_size: int) -> str:
    """What ``claim_run_folder`` did on this rank: ``entered (lock present)`` or the refusal."""
    try:
        with claim_run_folder(_config(output_dir, "run")) as run_dir:
            seen = f"entered, lock {(run_dir / LOCK_NAME).is_file()}"
            torch.distributed.barrier()  # rank 0 releases only after every rank looked
            return seen
    except ValueError as refusal:
        return str(refusal)


def test_rank0s_refusal_is_raised_on_every_rank(tmp_path: Path) -> None:
    assert run_on_two_ranks(partial(_claim_on_rank, tmp_path), tmp_path) == ["entered, lock True"] * 2
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    outcomes = run_on_two_ranks(partial(_claim_on_rank, tmp_path), tmp_path)
    assert outcomes[0] == outcomes[1] and "holds a finished run (results.json)" in outcomes[0]
