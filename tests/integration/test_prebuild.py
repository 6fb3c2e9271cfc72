"""``reidscale prebuild`` and the session set-up that uses it: the one-time builds land in the caches
before any test that needs them, and each result says what happened."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reidscale import prebuild
from reidscale.prebuild import PrebuildResult

pytestmark = pytest.mark.deepspeed  # the session set-up has built DeepSpeed's op before these run

ROOT = Path(__file__).resolve().parents[2]


def test_result_lines() -> None:
    assert PrebuildResult("op", "ready", 41.26, "cached in /x").line() == "op: ready in 41.3 s (cached in /x)"
    assert PrebuildResult("op", "skipped", 0.01, "no GPU").line() == "op: skipped (no GPU)"
    assert PrebuildResult("op", "failed", 2.0, "boom").line() == "op: failed in 2.0 s (boom)"


def test_a_build_that_raises_is_reported_as_failed() -> None:
    def explode() -> tuple[str, str]:
        raise RuntimeError("compiler not found")

    result = prebuild._timed("op", explode)
    assert (result.status, result.detail) == ("failed", "RuntimeError: compiler not found")
    assert result.seconds >= 0


def test_the_session_set_up_left_deepspeed_op_in_the_cache() -> None:
    pytest.importorskip("deepspeed")
    from torch.utils.cpp_extension import _get_build_directory

    result = prebuild.prebuild_deepspeed_ops()
    assert result.status == "ready", result.line()
    folder = Path(_get_build_directory("deepspeed_shm_comm", verbose=False))
    assert str(folder) in result.detail
    assert list(folder.glob("deepspeed_shm_comm*.so")), f"no built op in {folder}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only answer")
def test_cuda_ops_are_skipped_without_a_gpu() -> None:
    result = prebuild.prebuild_cuda_ops()
    assert result.status == "skipped" and "no CUDA device" in result.detail


def test_cli_prints_one_line_per_build_and_exits_zero() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reidscale", "prebuild"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("deepspeed ", "reidscale CUDA"))]
    assert [line.split(":")[0] for line in lines] == ["deepspeed shared-memory op", "reidscale CUDA ops"]
