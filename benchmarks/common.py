"""Shared benchmark helpers: provenance-stamped CSV rows, timing and isolated time / peak-memory measurement.

Timing (:func:`time_calls`): the first call is timed apart (wall clock, synchronised: it holds compilation,
autotuning, allocator and cache warm-up) and is never among the repetitions; further warm-up calls follow,
outside the statistic; then each repetition is timed with CUDA events around the call on a GPU
(``perf_counter`` on the CPU), the device synchronised once after the last. :class:`TimingStats` summarises
them as the median and the interquartile range (the spread), with the minimum and maximum. A timed call
must leave its results on the device: copies to the host belong after the timing (:func:`to_host`).

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

import argparse
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
from collections.abc import Callable, Sequence
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


def choice_list(parser: argparse.ArgumentParser, flag: str, text: str, choices: Sequence[str]) -> list[str]:
    """The comma-separated names in ``text``, in order, each one of ``choices``; ``parser.error`` naming
    ``flag``, the unknown names (or the empty list) and the choices otherwise."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(choices))
    if unknown or not names:
        parser.error(f"{flag}: unknown {unknown or 'empty list'}; choose from {list(choices)}")
    return names


def decode_path_problem(path: str) -> str | None:
    """Why the decoding path ``path`` (``pyav``, ``dali-cpu`` or ``dali-gpu``) cannot run here, or None."""
    import torch

    from reidscale.data.decode.loader import dali_available

    if path != "pyav" and not dali_available():
        return "nvidia-dali is not installed"
    if path == "dali-gpu" and not torch.cuda.is_available():
        return "no CUDA device"
    return None


CUDA_EVENTS = "cuda events per call"
PERF_COUNTER = "perf_counter per call"


@dataclass(frozen=True)
class TimingStats:
    """Seconds of the timed repetitions of one case, and of its first call (None when not timed apart).

    Quartiles are ``statistics.quantiles(..., n=4, method="inclusive")`` (for 1, 2, 3, 4, 5: 2 and 4).
    """

    seconds: tuple[float, ...]
    first_call: float | None = None

    def __post_init__(self) -> None:
        if not self.seconds:
            raise ValueError("seconds is empty: at least one timed repetition is needed")

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def quartiles(self) -> tuple[float, float]:
        """(first, third) quartile; a single repetition is both."""
        if len(self.seconds) == 1:
            return self.seconds[0], self.seconds[0]
        q1, _, q3 = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return q1, q3

    @property
    def iqr(self) -> float:
        """Interquartile range: the spread reported next to the median."""
        q1, q3 = self.quartiles
        return q3 - q1


def _synchronize(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def time_calls(
    fn: Callable[[], Any], repeats: int | Callable[[float], int], warmup: int = 1, cuda: bool = False
) -> tuple[TimingStats, Any]:
    """Time ``fn``: ``warmup`` untimed calls (the first timed apart), then ``repeats`` timed calls.

    ``repeats`` may be a function of the last warm-up call's seconds (synchronised wall clock), to fit the
    repetitions to a time budget; it then needs ``warmup >= 1``. Returns ``(stats, result of the last
    call)``. On CUDA each repetition sits between two events recorded on the current stream (what the
    device spent from the end of the previous call, host gaps included); the host waits once, after the
    last. ``warmup = 0`` times every call, the first included.
    """
    if warmup < 0 or (callable(repeats) and warmup < 1):
        raise ValueError(f"warmup must be >= 0 (>= 1 when repeats is a function), got {warmup}")
    result, first_call, last_warmup = None, None, 0.0
    for index in range(warmup):
        _synchronize(cuda)
        start = time.perf_counter()
        result = fn()
        _synchronize(cuda)
        last_warmup = time.perf_counter() - start
        if index == 0:
            first_call = last_warmup
    count = repeats(last_warmup) if callable(repeats) else repeats
    if count < 1:
        raise ValueError(f"repeats must be >= 1, got {count}")
    if cuda:
        import torch

        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)
        ]
        torch.cuda.synchronize()
        for begin, end in events:
            begin.record()
            result = fn()
            end.record()
        torch.cuda.synchronize()
        seconds = tuple(begin.elapsed_time(end) / 1e3 for begin, end in events)
    else:
        timed = []
        for _ in range(count):
            start = time.perf_counter()
            result = fn()
            timed.append(time.perf_counter() - start)
        seconds = tuple(timed)
    return TimingStats(seconds, first_call), result


def to_host(value: Any) -> Any:
    """``value`` with every tensor (also inside tuples, lists and dicts) moved to the CPU."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu()
    if isinstance(value, (tuple, list)):
        return type(value)(to_host(item) for item in value)
    if isinstance(value, dict):
        return {key: to_host(item) for key, item in value.items()}
    return value


@dataclass
class Measurement:
    """What one isolated case produced: its last result (on the host), the timed repetitions (seconds,
    first call apart when warmed up), peak memory, and the timer used."""

    result: Any
    seconds: list[float]
    peak_bytes: int
    memory_method: str
    first_call_s: float | None = None
    timer: str = PERF_COUNTER
    warmup: int = 0

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def stats(self) -> TimingStats:
        return TimingStats(tuple(self.seconds), self.first_call_s)


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


def _run_case(
    setup: Callable[..., Callable[[], Any]], args: tuple, repeats: int, cuda: bool, warmup: int
) -> Measurement:
    import torch

    case = setup(*args)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline, method = torch.cuda.memory_allocated(), "cuda: max_memory_allocated - allocated at start"
    else:
        baseline, method = _start_cpu_peak()
    stats, result = time_calls(case, repeats, warmup, cuda)
    peak = torch.cuda.max_memory_allocated() - baseline if cuda else _cpu_peak(baseline, method)
    timer = CUDA_EVENTS if cuda else PERF_COUNTER
    return Measurement(to_host(result), list(stats.seconds), peak, method, stats.first_call, timer, warmup)


def measure_isolated(
    setup: Callable[..., Callable[[], Any]],
    args: tuple,
    repeats: int = 1,
    cuda: bool = False,
    warmup: int = 0,
) -> Measurement:
    """Run ``setup(*args)`` in a fresh spawned process, then time its returned callable (:func:`time_calls`:
    ``warmup`` calls first, the first of them timed apart, then ``repeats`` timed calls).

    ``setup`` must be a module-level (picklable) function that builds the inputs and returns the case; the
    case's result is moved to the host after the timing and must then be picklable. Peak memory is measured
    over all calls (see the module docstring).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_run_case, (setup, args, repeats, cuda, warmup))


def run_timed(main: Callable[[], int]) -> None:
    """Run a benchmark's ``main``, print its total wall time, and exit with its status."""
    start = time.perf_counter()
    status = main()
    print(f"total {time.perf_counter() - start:.1f} s")
    raise SystemExit(status)
