"""Shared harness for kernel test cases that must run under the Triton interpreter on CPU.

A test module defines ``case_*(device)`` functions and collects them with :func:`collect_cases`. On a CUDA
machine :func:`results_of_cases` runs them in-process on the GPU (the compiled kernels); without one it
runs the module once as ``python -m tests.<module>`` with ``TRITON_INTERPRET=1`` (triton decides
interpreter or not when kernels are defined, so the variable must be set before import and must not leak
into the pytest process). The module binds ``kernel_results, test_compiled_kernel_matches_reference,
test_interpreted_kernel_matches_reference = case_tests(__file__, CASES)`` and ends with
``if __name__ == "__main__": print_case_results(CASES)``. The compiled tests are marked ``gpu`` (so
``pytest -m gpu`` runs them) and skip without a GPU; the interpreted ones skip on a GPU machine.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.support.processes import run_command

Case = Callable[[torch.device], None]
REPO_ROOT = Path(__file__).resolve().parents[2]


def collect_cases(namespace: dict[str, object]) -> dict[str, Case]:
    """name → function for every ``case_<name>`` defined in the module whose globals these are, by name."""
    module = namespace["__name__"]
    return {
        name[5:]: fn
        for name, fn in sorted(namespace.items())
        if name.startswith("case_") and getattr(fn, "__module__", None) == module
    }


def run_cases(cases: dict[str, Case], device: torch.device) -> dict[str, str]:
    """Run every case on ``device``; name → "ok" or the failure text."""
    results = {}
    for name, fn in cases.items():
        try:
            fn(device)
            results[name] = "ok"
        except Exception as exc:  # reported per case by the parent test
            results[name] = f"{type(exc).__name__}: {exc}"
    return results


def results_of_cases(module_file: str, cases: dict[str, Case]) -> dict[str, str]:
    """The cases' results: in-process on a GPU, else from one interpreter subprocess of ``module_file``."""
    if torch.cuda.is_available():
        return run_cases(cases, torch.device("cuda"))
    module = ".".join(Path(module_file).resolve().relative_to(REPO_ROOT).with_suffix("").parts)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = run_command([sys.executable, "-m", module], env=env, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"interpreter run of {module} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_case_results(cases: dict[str, Case]) -> None:
    """Script entry point of a case module: run the cases on the CPU and print their results as JSON."""
    print(json.dumps(run_cases(cases, torch.device("cpu"))))


def case_tests(module_file: str, cases: dict[str, Case]) -> tuple[Callable, Callable, Callable]:
    """``(kernel_results fixture, compiled test, interpreted test)`` for a case module to bind at top level:
    one test per case in each, all cases run once per module (on the GPU, or in one interpreter
    subprocess); exactly one of the two tests runs on a given machine."""

    @pytest.fixture(scope="module")
    def kernel_results() -> dict[str, str]:
        return results_of_cases(module_file, cases)

    @pytest.mark.gpu
    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the compiled kernels)")
    @pytest.mark.parametrize("name", sorted(cases))
    def test_compiled_kernel_matches_reference(kernel_results: dict[str, str], name: str) -> None:
        assert kernel_results[name] == "ok", kernel_results[name]

    @pytest.mark.skipif(
        torch.cuda.is_available(), reason="a CUDA GPU is here: the compiled cases run instead"
    )
    @pytest.mark.parametrize("name", sorted(cases))
    def test_interpreted_kernel_matches_reference(kernel_results: dict[str, str], name: str) -> None:
        assert kernel_results[name] == "ok", kernel_results[name]

    return kernel_results, test_compiled_kernel_matches_reference, test_interpreted_kernel_matches_reference
