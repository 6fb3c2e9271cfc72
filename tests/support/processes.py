"""Commands started by tests: one runner with a guard against hangs, never a clock on the outcome.

A test that starts processes (a launcher and its ranks, a CLI run, an interpreter subprocess) waits for
them to exit, which is the event it needs. How long that takes depends on the machine and its load (a
2-rank run can take three times longer while another job shares the cores), so the only limit is a hang
guard far above any honest run: ``REIDSCALE_TEST_HANG_GUARD_S`` seconds (default 1200). When it fires, the
whole process group (launcher and ranks) is killed and the test fails with the tail of the output.
One-time builds are not the tests' business: the session set-up (tests/conftest.py) does them first.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: seconds after which a started command counts as hung (not as slow)
HANG_GUARD_S = float(os.environ.get("REIDSCALE_TEST_HANG_GUARD_S", "1200"))


def reidscale_cli(*args: str) -> list[str]:
    """The command line of ``python -m reidscale ARGS`` with this interpreter."""
    return [sys.executable, "-m", "reidscale", *args]


def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path = ROOT,
    merge_stderr: bool = False,
    stdin: str | None = None,
) -> subprocess.CompletedProcess:
    """Run ``argv`` in its own process group and wait for it to exit; text output captured (stderr into
    stdout with ``merge_stderr``). Only a hang (``HANG_GUARD_S``) ends the wait early: the group is
    killed and the test fails."""
    argv = [str(arg) for arg in argv]
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(input=stdin, timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"{shlex.join(argv)} still running after the {HANG_GUARD_S:.0f} s hang guard "
            f"(REIDSCALE_TEST_HANG_GUARD_S); killed\n{(stdout or '')[-3000:]}\n{(stderr or '')[-3000:]}"
        )
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
