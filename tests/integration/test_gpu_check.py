"""benchmarks/gpu_check.py, benchmarks/gpu_timings.py and the timing helpers of benchmarks/common.py.

Without a GPU the check prints its plan and exits 0 (run as the Makefile runs it, also with torch made
unimportable); the pure helpers (phase deadlines, repetitions that fit, predicted times, JUnit counts, the
timing statistic) are checked against hand-worked values; the child runner against real child processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import common, gpu_check, gpu_timings
from benchmarks.bench_kernels import Roofline
from benchmarks.common import PERF_COUNTER, PROVENANCE_COLUMNS, TimingStats, time_calls, to_host
from benchmarks.kernel_shapes import SHAPES, Shape
from tests.support.processes import run_command

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


# --------------------------------------------------------------------------------------------- the plan
def _run_script(env_path: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": env_path}
    return run_command([sys.executable, str(SCRIPT), *args], env=env, cwd=ROOT)


def _assert_plan(stdout: str) -> None:
    assert "gpu-check plan (480 s in all;" in stdout
    for phase in gpu_check.PHASE_NAMES:
        assert f". {phase}" in stdout
    for name in SHAPES:
        assert name in stdout
    assert "N = 12,936, 1,000,000, B = 64 anchors" in stdout
    assert str(ROOT / "benchmarks" / "results" / "gpu_check.csv") in stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check would run, not plan")
def test_without_a_gpu_the_plan_is_printed_and_the_status_is_0() -> None:
    done = _run_script(str(ROOT))
    assert done.returncode == 0, done.stderr
    _assert_plan(done.stdout)
    assert "no CUDA GPU visible to torch: plan only" in done.stdout


def test_without_torch_the_plan_is_printed_and_the_status_is_0(tmp_path: Path) -> None:
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('simulated: torch is not installed')\n")
    done = _run_script(f"{tmp_path}:{ROOT}")
    assert done.returncode == 0, done.stderr
    _assert_plan(done.stdout)
    assert "torch does not import (simulated: torch is not installed): plan only" in done.stdout


def test_plan_marks_unselected_phases_and_counts_wheels(tmp_path: Path) -> None:
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "b-2.0-py3-none-any.whl").write_bytes(b"")
    lines = gpu_check.plan_lines(300, ["tests"], tmp_path, "why")
    assert lines[0] == "gpu-check plan (300 s in all; why)"
    text = "\n".join(lines)
    assert "build     cap 180 s, floor 20 s" in text and "[not selected]" in text
    assert not any("env" in line and "[not selected]" in line for line in lines)  # env always runs
    assert f"wheels: 2 in {tmp_path}" in text


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--phases", "tests,nonsense"])
    assert "--phases: unknown ['nonsense']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--budget", "30"])
    assert "--budget must be >= 60 s" in capsys.readouterr().err


def test_selection_sizes_are_bench_scl_defaults() -> None:
    from benchmarks import bench_scl

    args = bench_scl.parse_args(["--device", "cpu"])
    assert tuple(args.sizes) == gpu_timings.SELECTION_ROWS


# -------------------------------------------------------------------------------------- deadlines
def test_phase_budget_hand_worked() -> None:
    # 480 s left, cap 180, later floors 30 + 20 + 20 + 45 = 115: the cap binds
    assert gpu_check.phase_budget(480, 180, [30, 20, 20, 45]) == 180
    # 100 s left, cap 150, later floors 20 + 45: 100 − 65 = 35
    assert gpu_check.phase_budget(100, 150, [20, 45]) == 35
    # less left than the later floors: nothing
    assert gpu_check.phase_budget(50, 150, [20, 45]) == 0
    assert gpu_check.phase_budget(70, 60, []) == 60


def test_fit_repeats_hand_worked() -> None:
    assert gpu_timings.fit_repeats(0.1, 2.0) == 20  # 2 s / 0.1 s
    assert gpu_timings.fit_repeats(0.001, 2.0) == gpu_timings.MAX_REPEATS  # 2000 capped at 100
    assert gpu_timings.fit_repeats(1.0, 2.0) == gpu_timings.MIN_REPEATS  # 2 raised to 5
    assert gpu_timings.fit_repeats(0.3, 2.0, low=1, high=10) == 6  # floor(6.67)
    assert gpu_timings.fit_repeats(0.0, 2.0) == gpu_timings.MAX_REPEATS


def test_predicted_seconds_hand_worked() -> None:
    allowance = gpu_timings.FIRST_CALL_ALLOWANCE_S
    assert gpu_timings.predicted_seconds(1e12, None, 7) == 0.0  # nothing seen: the shape runs
    # 7 calls of 2e12 FLOP at 1e-13 s/FLOP = 1.4 s, plus the allowance
    assert gpu_timings.predicted_seconds(2e12, 1e-13, 7) == pytest.approx(1.4 + allowance)


def test_shapes_run_in_order_of_work() -> None:
    order = gpu_timings.by_work(list(SHAPES), SHAPES)
    # updates (6·B·D) first; the 4M × 2048 top-k (2·4096·4e6·2048 = 6.7e16 FLOP) last
    assert order[:2] == ["update_selective_market", "update_b1024_d256_n1M"]
    assert order[2] == "selective_market"  # 2·64·12,936·4096 = 6.8e9 FLOP
    assert order[-1] == "b4096_d2048_n4M"
    assert sorted(order) == sorted(SHAPES)


# ------------------------------------------------------------------------------------ test outcomes
JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="1" failures="2" skipped="10" tests="40"
time="12.3"><testcase classname="tests.x" name="a" time="0.1"/></testsuite></testsuites>"""


def test_junit_counts_hand_worked() -> None:
    counts = gpu_check.junit_counts(JUNIT)
    assert counts == {"tests": 40, "passed": 27, "failed": 2, "errors": 1, "skipped": 10}
    bare = '<testsuite errors="0" failures="0" skipped="3" tests="3"/>'
    assert gpu_check.junit_counts(bare) == {"tests": 3, "passed": 0, "failed": 0, "errors": 0, "skipped": 3}


def test_tests_failed_rules() -> None:
    clean = {"tests": 3, "passed": 3, "failed": 0, "errors": 0, "skipped": 0}
    assert not gpu_check.tests_failed(0, clean)
    assert not gpu_check.tests_failed(5, {**clean, "tests": 0, "passed": 0})  # nothing collected
    assert gpu_check.tests_failed(1, {**clean, "passed": 2, "failed": 1})
    assert gpu_check.tests_failed(2, clean)  # interrupted (e.g. a collection error)
    assert gpu_check.tests_failed(None, clean)  # killed at its deadline
    assert gpu_check.tests_failed(0, None)  # no report


def test_python_path_puts_entries_first_without_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/b:/a:")
    assert gpu_check.python_path("/a", Path("/c")) == "/a:/c:/b"


# -------------------------------------------------------------------------------------- child runner
def test_run_child_logs_every_line_and_returns_the_status(tmp_path: Path) -> None:
    log = gpu_check.Log(tmp_path / "check.log")
    code = "import sys; print('one', flush=True); print('two', file=sys.stderr); sys.exit(3)"
    done = gpu_check.run_child([sys.executable, "-c", code], {"PATH": "/usr/bin:/bin"}, 60, log, echo=False)
    log.close()
    assert done.returncode == 3 and done.tail == ["one", "two"]
    text = (tmp_path / "check.log").read_text()
    assert "one\ntwo\n" in text and f"$ {sys.executable} -c" in text


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (exited, or a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_run_child_kills_the_whole_group_at_the_deadline(tmp_path: Path, monkeypatch) -> None:
    # The deadline is made to arrive once the child and its grandchild are both running (an event, not a
    # clock), so the outcome does not depend on how fast the machine starts processes.
    log = gpu_check.Log(tmp_path / "check.log")
    pid_file, ready = tmp_path / "grandchild.pid", tmp_path / "child.ready"
    grandchild = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    child = tmp_path / "child.py"
    child.write_text(
        "import os, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}])\n"
        f"while not os.path.exists({str(pid_file)!r}):\n"
        "    time.sleep(0.01)\n"
        "print('started', flush=True)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(600)\n"
    )

    class DeadlineOnceStarted(subprocess.Popen):
        def wait(self, timeout: float | None = None) -> int:
            if timeout is None:
                return super().wait()
            while not (ready.exists() and pid_file.read_text()):
                if super().poll() is not None:
                    return self.returncode
                time.sleep(0.01)
            raise subprocess.TimeoutExpired(self.args, timeout)

    monkeypatch.setattr(gpu_check.subprocess, "Popen", DeadlineOnceStarted)
    done = gpu_check.run_child([sys.executable, str(child)], {"PATH": "/usr/bin:/bin"}, 2, log, echo=False)
    monkeypatch.undo()
    log.close()
    assert done.returncode is None  # killed: the child would have slept for 10 minutes
    assert done.tail == ["started"]
    assert "KILLED at its deadline of 2 s" in (tmp_path / "check.log").read_text()
    grandchild_pid = int(pid_file.read_text())
    deadline = time.monotonic() + 60  # a hang guard: SIGKILL ends it at once
    while not _gone(grandchild_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild_pid), "the grandchild survived the kill of its group"


# ------------------------------------------------------------------------------------------- timing
def test_timing_stats_hand_worked() -> None:
    stats = TimingStats((5.0, 1.0, 4.0, 2.0, 3.0), first_call=9.0)
    assert stats.median == 3.0
    assert stats.quartiles == (2.0, 4.0)  # inclusive quartiles of 1..5
    assert stats.iqr == 2.0
    assert TimingStats((0.5,)).iqr == 0.0
    assert TimingStats((1.0, 2.0, 3.0, 4.0)).quartiles == (1.75, 3.25)  # 1 + 0.75·1, 1 + 2.25·1
    with pytest.raises(ValueError, match="empty"):
        TimingStats(())


class FakeClock:
    """A ``perf_counter`` that only moves when a timed function says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_calls_keeps_the_first_call_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(common.time, "perf_counter", clock)
    calls = []

    def fn() -> int:
        calls.append(len(calls))
        clock.now += 0.2 if len(calls) == 1 else 0.001 * len(calls)  # the first call "compiles"
        return len(calls)

    stats, result = time_calls(fn, repeats=5, warmup=2)
    assert len(calls) == 7 and result == 7  # 2 warm-up + 5 timed; the last call's result
    assert stats.first_call == pytest.approx(0.2)
    assert stats.seconds == pytest.approx((0.003, 0.004, 0.005, 0.006, 0.007))  # calls 3..7, not the first


def test_time_calls_fits_the_repetitions_to_the_last_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(common.time, "perf_counter", clock)
    seen = []

    def repeats(per_call: float) -> int:
        seen.append(per_call)
        return 3

    def sleep_20ms() -> None:
        clock.now += 0.02

    stats, _ = time_calls(sleep_20ms, repeats, warmup=1)
    assert len(stats.seconds) == 3 and seen == [pytest.approx(0.02)]
    with pytest.raises(ValueError, match="warmup"):
        time_calls(lambda: None, repeats, warmup=0)
    stats, _ = time_calls(lambda: None, 4, warmup=0)
    assert stats.first_call is None and len(stats.seconds) == 4


def test_to_host_moves_nested_tensors() -> None:
    value = {"a": (torch.ones(2), [torch.zeros(1), 3]), "b": "x"}
    moved = to_host(value)
    assert moved["a"][0].device.type == "cpu" and isinstance(moved["a"][1], list) and moved["b"] == "x"


# ------------------------------------------------------------------ the timing driver, smoke on CPU
def _args(**changes: object) -> argparse.Namespace:
    base = {"dtype": "float32", "device": "cpu"}
    return argparse.Namespace(**{**base, **changes})


@pytest.fixture
def tiny_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SHAPES, "tiny_topk", Shape("topk", 6, 16, 300, 7, 1))
    monkeypatch.setitem(SHAPES, "tiny_loss", Shape("loss", 5, 8, 200, 0, 1))
    monkeypatch.setitem(SHAPES, "tiny_update", Shape("update", 4, 8, 50, 0, 1))


ROOF = Roofline(1e10, 1e9, "assumed for the test")


def test_kernel_rows_time_every_cpu_backend_and_agree(tiny_shapes: None, capsys) -> None:
    pace: dict[tuple[str, str], float] = {}
    rows = {}
    for name in ("tiny_topk", "tiny_loss", "tiny_update"):
        rows[name] = gpu_timings.kernel_rows(name, _args(), pace, gpu_timings.Deadline(120), ROOF)
    assert [row["backend"] for row in rows["tiny_loss"]] == ["dense", "reference"]
    assert [row["backend"] for row in rows["tiny_update"]] == ["reference"]
    assert [row["backend"] for row in rows["tiny_topk"]][:2] == ["mm+topk", "reference"]
    for row in [row for group in rows.values() for row in group]:
        assert set(row) <= set(gpu_timings.ROW_COLUMNS)
        assert row["agree"] == "yes" and row["timer"] == PERF_COUNTER and row["peak_extra_mb"] == ""
        assert gpu_timings.MIN_REPEATS <= row["repeats"] <= gpu_timings.MAX_REPEATS and row["warmup"] == 2
        assert float(row["seconds_min"]) <= float(row["seconds_median"]) <= float(row["seconds_max"])
    assert rows["tiny_topk"][0]["speedup_vs_baseline"] == "1.00"
    assert ("topk", "mm+topk") in pace and ("loss", "dense") in pace
    assert "triton: not run (the triton kernel runs on CUDA tensors" in capsys.readouterr().out


def test_kernel_rows_drop_a_backend_predicted_past_the_deadline(tiny_shapes: None, capsys) -> None:
    slow = {("topk", "reference"): 1.0}  # 1 s per FLOP: hopeless
    rows = gpu_timings.kernel_rows("tiny_topk", _args(), slow, gpu_timings.Deadline(60), ROOF)
    assert "reference" not in [row["backend"] for row in rows] and rows[0]["backend"] == "mm+topk"
    assert "[tiny_topk] reference: DROPPED (predicted" in capsys.readouterr().out
    slow = {("topk", "mm+topk"): 1.0}  # the baseline itself does not fit: no rows at all
    assert gpu_timings.kernel_rows("tiny_topk", _args(), slow, gpu_timings.Deadline(60), ROOF) == []
    assert "the baseline mm+topk did not run: no rows for this shape" in capsys.readouterr().out


def test_selection_rows_agree_with_the_original_on_cpu() -> None:
    rows = gpu_timings.selection_rows(600, gpu_timings.Deadline(120), ROOF, "cpu")
    assert [row["backend"] for row in rows] == ["original", "mm+topk", "fused"]
    assert rows[0]["agree"] == "baseline"
    assert all(row["agree"] == "yes" for row in rows[1:]), [row["agreement"] for row in rows]
    assert rows[2]["detail"] == "SelectiveBanks.select, bank_topk: torch" and rows[0]["k"] == 507


def test_dense_selection_pads_like_the_original() -> None:
    from benchmarks import bench_scl
    from reidscale.objectives.selective.banks import SelectiveBanks
    from reidscale.objectives.selective.config import SelectiveConfig

    config = SelectiveConfig(global_dim=4, local_dim=2, num_stripes=2, num_positives=1, num_negatives=3)
    banks = SelectiveBanks(3, torch.tensor([0, 1, 0]), config)
    bench_scl.fill_selection_and_mixture(banks, seed=0)
    queries = bench_scl.normalise_blocks(
        torch.randn(2, 8, generator=torch.Generator().manual_seed(1)), config
    )
    self_index, cams = torch.tensor([0, -1]), torch.tensor([0, 1])
    got = gpu_timings.dense_selection(queries, banks, 4, self_index, cams, 0.25)
    want = bench_scl.original_topk(
        queries, banks.weighted_banks(), 4, self_index=self_index, query_cams=cams, bank_cams=banks.cameras,
        cam_penalty=0.25,
    )  # fmt: skip
    assert torch.equal(got[1], want[1])  # row 0: two rows then padding; row 1: all three then padding
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)


def test_main_appends_rows_with_provenance(tiny_shapes: None, tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    argv = ["--part", "kernels", "--device", "cpu", "--shapes", "tiny_update", "--output", str(out)]
    assert gpu_timings.main([*argv, "--budget", "60"]) == 0
    header = out.read_text().splitlines()[0].split(",")
    assert header == [*PROVENANCE_COLUMNS, *gpu_timings.ROW_COLUMNS]
