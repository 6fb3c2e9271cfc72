"""``make gpu-check``: everything worth doing in one short visit to a GPU machine, as one command.

Runs without an installed package or a virtual environment (``PYTHONPATH=. python3
benchmarks/gpu_check.py``) on a bare, offline machine with torch, triton, numpy, pytest, pyyaml, pillow,
psutil, tqdm and timm. Phases, in order, each with a deadline inside ``--budget`` (480 s):

1. ``wheels``: when the wheel folder (``--wheels``, default ``.whl/``) holds wheels, ``pip install
   --no-index --no-deps --target`` them into a temporary folder put on the import path (how deepspeed
   travels to an offline machine: README, "Measured").
2. ``env``: python, torch, its CUDA, triton, the GPU (name, memory, multiprocessors, capability, driver),
   nvcc, and which optional packages import (deepspeed, faiss, DALI, wandb, timm, ...).
3. ``build``: the CUDA extension from ``csrc/``, compiled by the project's JIT loader
   (``reidscale.kernels.cuda``) with the machine's nvcc for this GPU's architecture only
   (``TORCH_CUDA_ARCH_LIST``, ``MAX_JOBS`` = the cores) into ``build/gpu_check/cuda``. Without nvcc, or when
   the compilation fails, it says so (the compiler output in the log) and the later phases run with
   ``REIDSCALE_CUDA_JIT=0``: the extension's tests skip and its timings are not taken.
4. ``tests``: ``pytest -m gpu`` (the compiled Triton cases included); passed/failed/skipped counts.
5. ``kernels`` and 6. ``selection``: ``benchmarks/gpu_timings.py`` (every kernel backend at the real
   shapes, the selective-contrastive selection at N = 12,936 and 1M; CUDA events after warm-up), each
   with an empty Triton cache, so that the first-call times hold the compilation.
7. ``cion``: ``benchmarks/bench_cion_step.py`` on the GPU: one CION step of ResNet50-IBN-a, 120 images,
   2 + 8 views, bf16 autocast (plain PyTorch: needs no deepspeed).
8. ``train``: ``benchmarks/bench_train.py`` on the GPU, a short configuration, when deepspeed imports.

Every phase but ``env`` runs in a child process killed at its deadline, so a hang or a crashed CUDA context
costs only that phase. A phase's deadline is its cap, or less when the later phases' floors would not fit.

Output: the log ``benchmarks/results/gpu_check_<UTC time>.log`` (everything printed, and every child's
whole output), rows in ``benchmarks/results/gpu_check.csv`` (kernels, selection), ``cion_step.csv`` and
``train.csv`` (the training steps), the tests' JUnit XML beside the log; all copied to ``$OUT`` when that
variable names a folder. The exit status is 1 when a GPU test failed (or the test phase did not finish) or
a timed backend disagreed with its baseline, else 0. Without torch or without a GPU it prints the plan and
exits 0.

    make gpu-check
    PYTHONPATH=. python3 benchmarks/gpu_check.py --phases build,tests --budget 300
"""

from __future__ import annotations

import argparse
import collections
import csv
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # repo root: `benchmarks` and `reidscale` import when run as a script
from benchmarks.common import choice_list  # noqa: E402
from benchmarks.gpu_timings import SELECTION_BATCH, SELECTION_ROWS  # noqa: E402  (torch-free imports)
from benchmarks.kernel_shapes import SHAPES  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CSV_NAME = "gpu_check.csv"
TRAIN_CSV_NAME = "train.csv"
CUDA_CACHE = ROOT / "build" / "gpu_check" / "cuda"
SITE = Path("/tmp/reidscale_gpu_check_site")
TOTAL_BUDGET_S = 480.0
END_RESERVE_S = 10.0  # the summary, the copies to $OUT
TAIL_LINES = 40
#: bench_train.py on the GPU: one rank, bf16, ResNet-50-IBN-a, DDP and ZeRO 0 / 2, a few steps
TRAIN_ARGS: tuple[str, ...] = (
    "--device", "cuda", "--world-size", "1", "--models", "resnet50_ibn_a", "--stages", "0,2",
    "--precisions", "bf16", "--micro-batch", "64", "--images-per-id", "4", "--warmup-steps", "3",
    "--timed-steps", "10",
)  # fmt: skip
TRAIN_CASES = 3  # ddp, zero0, zero2
CION_CSV_NAME = "cion_step.csv"
#: bench_cion_step.py on the GPU: one CION step of ResNet50-IBN-a at the paper's 120 images and 2 + 8 views
CION_ARGS: tuple[str, ...] = ("--device", "cuda", "--batch", "120", "--warmup", "3", "--repeats", "10")
#: the wheels deepspeed needs on such a machine, which lacks them (README)
DEEPSPEED_WHEELS = (
    "deepspeed, hjson, pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions"
)


@dataclass(frozen=True)
class Phase:
    """One phase: what it does, its longest deadline (cap) and the least time worth starting it with."""

    name: str
    cap_s: float
    floor_s: float
    what: str


PHASES: tuple[Phase, ...] = (
    Phase("wheels", 60, 0, "install the wheel folder's wheels (--no-index --no-deps) into a temporary site"),
    Phase("env", 30, 0, "python, torch, CUDA, triton, GPU, driver, nvcc, optional packages"),
    Phase("build", 180, 20, "CUDA extension from csrc/ (JIT loader, this GPU's arch, MAX_JOBS = cores)"),
    Phase("tests", 180, 30, "pytest -m gpu (JUnit XML: passed / failed / skipped)"),
    Phase("kernels", 150, 20, "benchmarks/gpu_timings.py --part kernels"),
    Phase("selection", 90, 20, "benchmarks/gpu_timings.py --part selection"),
    Phase("cion", 90, 30, "benchmarks/bench_cion_step.py " + " ".join(CION_ARGS) + " (plain PyTorch)"),
    Phase("train", 150, 45, "benchmarks/bench_train.py " + " ".join(TRAIN_ARGS) + " (needs deepspeed)"),
)
PHASE_NAMES: tuple[str, ...] = tuple(phase.name for phase in PHASES)
#: phases that run whatever --phases says (the others read what they find)
ALWAYS: tuple[str, ...] = ("env",)


# ------------------------------------------------------------------------------------ pure helpers
def phase_budget(remaining_s: float, cap_s: float, later_floors_s: list[float]) -> float:
    """Seconds a phase may take: its cap, or what is left once the later phases' floors are set aside."""
    return max(0.0, min(cap_s, remaining_s - sum(later_floors_s)))


def junit_counts(xml_text: str) -> dict[str, int]:
    """tests / passed / failed / errors / skipped of a pytest JUnit XML report (all its test suites)."""
    root = ET.fromstring(xml_text)
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {key: sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors")}
    skipped = sum(int(suite.get("skipped", 0)) for suite in suites)
    failed, errors = counts["failures"], counts["errors"]
    return {
        "tests": counts["tests"],
        "passed": counts["tests"] - failed - errors - skipped,
        "failed": failed,
        "errors": errors,
        "skipped": skipped,
    }


def tests_failed(returncode: int | None, counts: dict[str, int] | None) -> bool:
    """Whether the test phase counts as failed: killed, no report, failures or errors, or a pytest exit
    status other than 0 (all passed) and 5 (no test collected)."""
    if returncode is None or counts is None:
        return True
    return counts["failed"] + counts["errors"] > 0 or returncode not in (0, 5)


def python_path(*entries: Path | str) -> str:
    """``PYTHONPATH`` with ``entries`` first, then the current value's entries (duplicates dropped)."""
    current = [item for item in os.environ.get("PYTHONPATH", "").split(os.pathsep) if item]
    ordered = [str(entry) for entry in entries] + current
    return os.pathsep.join(dict.fromkeys(ordered))


def driver_version() -> str | None:
    """The NVIDIA driver's version from ``nvidia-smi``, or None without it."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def plan_lines(budget_s: float, phases: list[str], wheels: Path, reason: str) -> list[str]:
    """The plan: why only the plan is printed (``reason``, empty on a GPU), the phases with their caps and
    floors, the shapes, the wheel folder and where the rows and the log go."""
    lines = [
        f"gpu-check plan ({budget_s:.0f} s in all; {reason})" if reason else f"gpu-check ({budget_s:.0f} s)"
    ]
    for index, phase in enumerate(PHASES, 1):
        state = "" if phase.name in phases or phase.name in ALWAYS else "  [not selected]"
        limits = f"cap {phase.cap_s:>3.0f} s, floor {phase.floor_s:>2.0f} s"
        lines.append(f"  {index}. {phase.name:<9} {limits}: {phase.what}{state}")
    lines.append(
        "  kernel shapes (full N, float32; smallest work first, dropped when memory or time is short):"
    )
    lines += [f"     {name:<24} {shape.describe()}" for name, shape in SHAPES.items()]
    sizes = ", ".join(f"{n:,}" for n in SELECTION_ROWS)
    banks = "the paper's banks (SelectiveConfig defaults)"
    lines.append(f"  selection: N = {sizes}, B = {SELECTION_BATCH} anchors, {banks}")
    wheel_files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    lines.append(
        f"  wheels: {len(wheel_files)} in {wheels}" if wheel_files else f"  wheels: none in {wheels}"
    )
    lines.append(f"  rows: {RESULTS / CSV_NAME} (kernels, selection), {RESULTS / TRAIN_CSV_NAME} (train)")
    lines.append(f"  log: {RESULTS}/gpu_check_<UTC time>.log; copies to $OUT when it is set")
    return lines


# ----------------------------------------------------------------------------------------- running
class Log:
    """Prints lines and appends them to the log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, text: str = "", echo: bool = True) -> None:
        with self._lock:
            self._file.write(text + "\n")
            self._file.flush()
            if echo:
                print(text, flush=True)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


@dataclass
class ChildResult:
    """A finished child process: its exit status (None when killed at the deadline), time, output tail."""

    returncode: int | None
    seconds: float
    tail: list[str] = field(default_factory=list)


def run_child(
    cmd: list[str], env: dict[str, str], timeout_s: float, log: Log, echo: bool = True
) -> ChildResult:
    """Run ``cmd`` in its own process group, every output line to the log (and the console when ``echo``);
    the whole group is killed at ``timeout_s``."""
    log(f"$ {' '.join(cmd)}   (deadline {timeout_s:.0f} s)")
    start = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        start_new_session=True,
    )  # fmt: skip

    def pump() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            log(line.rstrip("\n"), echo)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        returncode: int | None = proc.wait(timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        returncode = None
        log(f"KILLED at its deadline of {timeout_s:.0f} s")
    reader.join(timeout=10)
    return ChildResult(returncode, time.monotonic() - start, list(tail))


@dataclass
class Outcome:
    """What a phase reports for the summary."""

    status: str
    seconds: float = 0.0
    failed: bool = False


class Check:
    """One gpu-check run: the budget, the log, the children's environment and the phases' outcomes."""

    def __init__(self, args: argparse.Namespace, log: Log) -> None:
        self.args, self.log = args, log
        self.start = time.monotonic()
        self.outcomes: dict[str, Outcome] = {}
        self.env = {**os.environ, "PYTHONPATH": python_path(ROOT), "PYTHONUNBUFFERED": "1"}
        self.gpu: dict[str, Any] = {}
        self.components: dict[str, dict[str, Any]] = {}
        self.junit = log.path.with_suffix(".junit.xml")
        self.csv_rows_before = count_rows(RESULTS / CSV_NAME)
        self.produced: list[Path] = [log.path]  # what goes to $OUT

    def remaining(self) -> float:
        return self.args.budget - END_RESERVE_S - (time.monotonic() - self.start)

    def budget_of(self, name: str) -> float:
        later = PHASE_NAMES[PHASE_NAMES.index(name) + 1 :]
        floors = [p.floor_s for p in PHASES if p.name in later and p.name in self.args.phases]
        phase = PHASES[PHASE_NAMES.index(name)]
        return phase_budget(self.remaining(), phase.cap_s, floors)

    def python(self) -> str:
        return sys.executable

    # ---------------------------------------------------------------------------------- phases
    def wheels(self, budget: float) -> Outcome:
        folder = self.args.wheels
        files = sorted(folder.glob("*.whl")) if folder.is_dir() else []
        if not files:
            return Outcome(f"no wheels in {folder}")
        cmd = [self.python(), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        cmd += ["--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, files)]
        done = run_child(cmd, self.env, budget, self.log)
        if done.returncode != 0:
            return Outcome(f"pip install failed (rc {done.returncode})", done.seconds)
        sys.path.insert(1, str(SITE))
        importlib.invalidate_caches()
        self.env["PYTHONPATH"] = python_path(ROOT, SITE)
        names = ", ".join(path.name.split("-")[0] for path in files)
        return Outcome(f"installed {len(files)} wheels into {SITE}: {names}", done.seconds)

    def environment(self, budget: float) -> Outcome:
        import torch

        from reidscale.info import component_report, gpu_report
        from reidscale.utils.cuda_toolkit import cuda_toolkit_root
        from reidscale.utils.provenance import git_commit, installed_versions

        versions = installed_versions()
        props = torch.cuda.get_device_properties(0)
        self.gpu = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
            "driver": driver_version() or "unknown (no nvidia-smi)",
            "count": len(gpu_report()),
        }
        self.components = component_report(has_gpu=True)
        log = self.log
        log(f"python   {versions['python']} ({sys.executable})")
        cudnn = torch.backends.cudnn.version()
        log(f"torch    {versions['torch']} (CUDA {torch.version.cuda}, cuDNN {cudnn})")
        log(f"triton   {versions.get('triton') or 'not installed'}")
        log(f"numpy    {versions.get('numpy') or 'not installed'}")
        log(f"commit   {git_commit()}")
        gpu = self.gpu
        log(f"GPU      {gpu['name']}, {gpu['memory_gib']} GiB, {gpu['multiprocessors']} SMs")
        log(f"         sm_{gpu['capability']}, driver {gpu['driver']}, {gpu['count']} visible")
        log(f"CUDA toolkit root: {cuda_toolkit_root() or 'none (no nvcc)'}")
        for name, status in self.components.items():
            log(f"  {name:<12} {'yes' if status['usable'] else 'no '}  {status['detail']}")
        return Outcome(f"{gpu['name']}, torch {versions['torch']}, CUDA {torch.version.cuda}")

    def build(self, budget: float) -> Outcome:
        from reidscale.utils.cuda_toolkit import cuda_toolkit_root

        root = cuda_toolkit_root()
        if root is None:
            self.env["REIDSCALE_CUDA_JIT"] = "0"
            return Outcome(
                "nvcc not found: the CUDA extension is not built (its tests skip, no cuda timings)"
            )
        if not self.env.get("CUDA_HOME"):
            self.env["CUDA_HOME"] = root
        if not self.env.get("TORCH_CUDA_ARCH_LIST") and self.gpu.get("capability"):
            self.env["TORCH_CUDA_ARCH_LIST"] = self.gpu["capability"]  # else torch targets the visible GPU
        self.env.update(MAX_JOBS=str(os.cpu_count() or 1), REIDSCALE_CUDA_CACHE=str(CUDA_CACHE))
        self.env.pop("REIDSCALE_CUDA_JIT", None)
        self.log(
            f"nvcc from {root}; TORCH_CUDA_ARCH_LIST={self.env.get('TORCH_CUDA_ARCH_LIST', '')}, "
            f"MAX_JOBS={self.env['MAX_JOBS']}, cache {CUDA_CACHE}"
        )
        probe = (
            "import sys; from reidscale.kernels.cuda import cuda_available; ok, why = cuda_available(); "
            "print(('BUILT: ' if ok else 'NOT BUILT: ') + why); sys.exit(0 if ok else 3)"
        )
        done = run_child([self.python(), "-c", probe], self.env, budget, self.log, echo=False)
        if done.returncode == 0:
            return Outcome(done.tail[-1] if done.tail else "built", done.seconds)
        self.env["REIDSCALE_CUDA_JIT"] = "0"  # the later phases must not try the same build again
        self.log("CUDA extension NOT built; the end of the compiler output:")
        for line in done.tail:
            self.log("  | " + line)
        why = "killed at the deadline" if done.returncode is None else f"rc {done.returncode}"
        return Outcome(f"build failed ({why}); later phases run without it", done.seconds)

    def tests(self, budget: float) -> Outcome:
        cmd = [self.python(), "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]
        cmd += ["--durations=10", f"--junitxml={self.junit}"]
        self.junit.unlink(missing_ok=True)
        done = run_child(cmd, self.env, budget, self.log)
        counts = junit_counts(self.junit.read_text(encoding="utf-8")) if self.junit.exists() else None
        if self.junit.exists():
            self.produced.append(self.junit)
        failed = tests_failed(done.returncode, counts)
        if counts is None:
            status = "killed at the deadline, no report" if done.returncode is None else "no JUnit report"
        else:
            status = ", ".join(f"{value} {key}" for key, value in counts.items() if key != "tests")
        rc = "killed" if done.returncode is None else f"rc {done.returncode}"
        return Outcome(f"{status} ({rc})", done.seconds, failed)

    def timings(self, part: str, budget: float) -> Outcome:
        cmd = [self.python(), str(ROOT / "benchmarks" / "gpu_timings.py"), "--part", part]
        cmd += ["--budget", f"{max(budget - 15, 10):.0f}", "--dtype", self.args.dtype]
        cmd += ["--output", str(RESULTS / CSV_NAME)]
        before = count_rows(RESULTS / CSV_NAME)
        # a Triton cache of its own: the first calls include the compilation even after the tests phase
        fresh_cache = tempfile.mkdtemp(prefix=f"gpu_check_triton_{part}_")
        done = run_child(cmd, {**self.env, "TRITON_CACHE_DIR": fresh_cache}, budget, self.log)
        rows = read_rows(RESULTS / CSV_NAME)[before:]
        if rows and RESULTS / CSV_NAME not in self.produced:
            self.produced.append(RESULTS / CSV_NAME)
        bad = [f"{row['shape']}/{row['backend']}" for row in rows if row["agree"] == "NO"]
        status = f"{len(rows)} rows" + (f"; DISAGREE: {', '.join(bad)}" if bad else "")
        if done.returncode != 0:
            status += "; killed at the deadline" if done.returncode is None else f"; rc {done.returncode}"
        return Outcome(status, done.seconds, bool(bad))

    def appending_rows(self, script: str, args: list[str], csv_name: str, budget: float) -> Outcome:
        """Run ``benchmarks/<script> *args --output <csv>`` as a child; the outcome counts its new rows."""
        cmd = [self.python(), str(ROOT / "benchmarks" / script), *args, "--output", str(RESULTS / csv_name)]
        before = count_rows(RESULTS / csv_name)
        done = run_child(cmd, self.env, budget, self.log)
        added = count_rows(RESULTS / csv_name) - before
        if added:
            self.produced.append(RESULTS / csv_name)
        ended = {0: "ok", None: "killed at the deadline"}.get(done.returncode, f"rc {done.returncode}")
        return Outcome(f"{ended}; {added} rows in {RESULTS / csv_name}", done.seconds)

    def cion(self, budget: float) -> Outcome:
        return self.appending_rows("bench_cion_step.py", list(CION_ARGS), CION_CSV_NAME, budget)

    def train(self, budget: float) -> Outcome:
        deepspeed = self.components.get("deepspeed", {})
        if not deepspeed.get("usable"):
            self.log(f"deepspeed does not import here ({deepspeed.get('detail', 'unknown')}).")
            self.log(
                "To bring it: on a machine with network, put the wheels of "
                f"{DEEPSPEED_WHEELS} for Python 3.12 into .whl/ (README, 'Measured'), copy .whl/ along "
                "with the tree, and run gpu-check again: it installs them itself."
            )
            return Outcome("skipped: deepspeed not importable (see the log for how to bring it)")
        per_case = max((budget - 10) / TRAIN_CASES, 30)
        args = [*TRAIN_ARGS, "--timeout", f"{per_case:.0f}"]
        return self.appending_rows("bench_train.py", args, TRAIN_CSV_NAME, budget)

    def run(self) -> int:
        actions: dict[str, Callable[[float], Outcome]] = {
            "wheels": self.wheels,
            "env": self.environment,
            "build": self.build,
            "tests": self.tests,
            "kernels": lambda budget: self.timings("kernels", budget),
            "selection": lambda budget: self.timings("selection", budget),
            "cion": self.cion,
            "train": self.train,
        }
        for phase in PHASES:
            if phase.name not in self.args.phases and phase.name not in ALWAYS:
                continue
            budget = self.budget_of(phase.name)
            self.log(f"\n=== {phase.name} ({budget:.0f} s of {self.remaining():.0f} s left) ===")
            if budget < max(phase.floor_s, 1.0):
                self.outcomes[phase.name] = Outcome(
                    f"skipped: {budget:.0f} s left for it (floor {phase.floor_s:.0f} s)"
                )
                self.log(self.outcomes[phase.name].status)
                continue
            started = time.monotonic()
            try:
                outcome = actions[phase.name](budget)
            except Exception as err:  # a phase that breaks is reported; the next phases still run
                outcome = Outcome(f"FAILED {type(err).__name__}: {err}", failed=phase.name == "tests")
            outcome.seconds = outcome.seconds or time.monotonic() - started
            self.outcomes[phase.name] = outcome
            self.log(f"--- {phase.name}: {outcome.status} ({outcome.seconds:.0f} s)")
        return self.summary()

    def summary(self) -> int:
        log = self.log
        log("\n=== summary ===")
        rows = read_rows(RESULTS / CSV_NAME)[self.csv_rows_before :]
        if rows:
            columns = ("part", "shape", "backend", "seconds_median", "seconds_iqr", "first_call_s", "repeats")
            columns += ("speedup_vs_baseline", "pct_roofline", "agree")
            for line in table([[row[c] for c in columns] for row in rows], columns):
                log(line)
        for name, outcome in self.outcomes.items():
            log(
                f"{name:<10} {outcome.seconds:>5.0f} s  {'FAILED ' if outcome.failed else ''}{outcome.status}"
            )
        failed = [name for name, outcome in self.outcomes.items() if outcome.failed]
        log(f"total {time.monotonic() - self.start:.0f} s; log {log.path}")
        log("RESULT: " + (f"FAILED ({', '.join(failed)})" if failed else "ok"))
        log.close()
        copied = copy_to_out(self.produced)
        if copied:
            print(f"copied to $OUT: {', '.join(copied)}", flush=True)
        return 1 if failed else 0


# ------------------------------------------------------------------------------------------- files
def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def count_rows(path: Path) -> int:
    return len(read_rows(path))


def table(cells: list[list[str]], columns: tuple[str, ...]) -> list[str]:
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in cells
    ]
    return lines


def copy_to_out(paths: list[Path]) -> list[str]:
    """Copy the existing ``paths`` into ``$OUT`` (when it names a folder); the names copied."""
    out = os.environ.get("OUT")
    if not out or not Path(out).is_dir():
        return []
    copied = []
    for path in paths:
        if path.exists():
            shutil.copy2(path, Path(out) / path.name)
            copied.append(path.name)
    return copied


# --------------------------------------------------------------------------------------------- cli
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="seconds for everything")
    parser.add_argument("--phases", default=",".join(PHASE_NAMES), help=f"a subset of {list(PHASE_NAMES)}")
    parser.add_argument(
        "--wheels", type=Path, default=ROOT / ".whl", help="folder of wheels to install first"
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    args = parser.parse_args(argv)
    args.phases = choice_list(parser, "--phases", args.phases, PHASE_NAMES)
    if args.budget < 60:
        parser.error(f"--budget must be >= 60 s, got {args.budget}")
    return args


def why_plan_only() -> str:
    """Empty when torch sees a CUDA GPU, else why only the plan can be printed."""
    try:
        import torch
    except ImportError as err:
        return f"torch does not import ({err}): plan only"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch: plan only"
    return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = why_plan_only()
    if reason:
        print("\n".join(plan_lines(args.budget, args.phases, args.wheels, reason)))
        return 0
    from reidscale.utils.provenance import utc_timestamp

    stamp = utc_timestamp().replace("-", "").replace(":", "")
    log = Log(RESULTS / f"gpu_check_{stamp}.log")
    for line in plan_lines(args.budget, args.phases, args.wheels, ""):
        log(line)
    try:
        return Check(args, log).run()
    finally:
        log.close()


if __name__ == "__main__":
    raise SystemExit(main())
