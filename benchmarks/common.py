"""Shared benchmark helpers: provenance-stamped CSV rows and isolated time / peak-memory measurement.

Peak memory, the method (named in every result):

* CUDA: ``torch.cuda.max_memory_allocated()`` minus the memory allocated when the case starts, after
  ``reset_peak_memory_stats`` (the caching allocator's view: tensors only, not the CUDA context).
* CPU: each case runs in a fresh process (multiprocessing "spawn") that first builds its inputs, then runs
  ``gc.collect()`` and glibc ``malloc_trim(0)`` (so freed heap is returned and not silently reused), resets
  the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and reads VmRSS; the
  result is VmHWM after the case minus that VmRSS. Where clear_refs cannot be written it falls back to the
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` increase, which is a lower bound when building the inputs
  peaked higher than the case; the method string says which was used.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import gc
import io
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reidscale.utils.io import atomic_write_text
from reidscale.utils.provenance import device_name, git_commit, installed_versions, utc_timestamp

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROVENANCE_COLUMNS: tuple[str, ...] = ("date", "commit", "device", "torch", "numpy", "faiss", "python")


def provenance() -> dict[str, str]:
    """Date, commit, device and package versions for one benchmark run."""
    versions = installed_versions()
    stamp = {"date": utc_timestamp(), "commit": git_commit(), "device": device_name()}
    stamp.update(
        {name: str(versions.get(name) or "not installed") for name in ("torch", "numpy", "faiss", "python")}
    )
    return stamp


def results_path(name_or_path: str | os.PathLike) -> Path:
    """``benchmarks/results/<name>.csv`` for a bare name, else the given path."""
    path = Path(name_or_path)
    return path if path.suffix == ".csv" or path.parent != Path(".") else RESULTS_DIR / f"{path}.csv"


def append_rows(name_or_path: str | os.PathLike, rows: list[dict[str, Any]], stamp: dict[str, str]) -> Path:
    """Append ``rows`` (each prefixed with the provenance ``stamp``) to a CSV, writing the header if new.

    All rows must have the same keys; an existing file must have exactly the same header (ValueError
    naming the file otherwise). The file is rewritten atomically.
    """
    if not rows:
        raise ValueError("rows is empty: nothing to append")
    columns = [*PROVENANCE_COLUMNS, *rows[0]]
    for row in rows:
        if list(row) != list(rows[0]):
            raise ValueError(f"every row must have the columns {list(rows[0])}, got {list(row)}")
    path = results_path(name_or_path)
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    if existing:
        header = next(csv.reader(io.StringIO(existing)))
        if header != columns:
            raise ValueError(
                f"{path} has columns {header}, the new rows have {columns}; use another --output"
            )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    if not existing:
        writer.writeheader()
    for row in rows:
        writer.writerow({**{key: stamp[key] for key in PROVENANCE_COLUMNS}, **row})
    atomic_write_text(path, existing + buffer.getvalue())
    return path


@dataclass
class Measurement:
    """What one isolated case produced: its last result, wall times of every repeat, peak memory."""

    result: Any
    seconds: list[float]
    peak_bytes: int
    memory_method: str

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"/proc/self/status has no field {field}")


def _release_free_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _start_cpu_peak() -> tuple[int, str]:
    """Baseline bytes and method name; resets the kernel's peak-RSS counter where possible."""
    _release_free_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib(
            "VmRSS"
        ) * 1024, "cpu: VmHWM after clear_refs reset - VmRSS at start (spawned process)"
    except OSError:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kib * 1024, "cpu: ru_maxrss increase (lower bound; spawned process)"


def _cpu_peak(baseline: int, method: str) -> int:
    if method.startswith("cpu: VmHWM"):
        return max(0, _status_kib("VmHWM") * 1024 - baseline)
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline)


def _run_case(setup: Callable[..., Callable[[], Any]], args: tuple, repeats: int, cuda: bool) -> Measurement:
    import torch

    case = setup(*args)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline, method = torch.cuda.memory_allocated(), "cuda: max_memory_allocated - allocated at start"
    else:
        baseline, method = _start_cpu_peak()
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = case()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() - baseline if cuda else _cpu_peak(baseline, method)
    return Measurement(result, seconds, peak, method)


def measure_isolated(
    setup: Callable[..., Callable[[], Any]], args: tuple, repeats: int = 1, cuda: bool = False
) -> Measurement:
    """Run ``setup(*args)`` in a fresh spawned process, then time its returned callable ``repeats`` times.

    ``setup`` must be a module-level (picklable) function that builds the inputs and returns the case; the
    case's result must be picklable. Peak memory is measured over all repeats (see the module docstring).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_run_case, (setup, args, repeats, cuda))


def run_timed(main: Callable[[], int]) -> None:
    """Run a benchmark's ``main``, print its total wall time, and exit with its status."""
    start = time.perf_counter()
    status = main()
    print(f"total {time.perf_counter() - start:.1f} s")
    raise SystemExit(status)
