"""GPU timings of ``gpu_check.py``: the memory-bank kernels and the selective-contrastive selection at their
real shapes, in one process on one CUDA device, inside a time budget.

Parts (``--part``):

* ``kernels``: every shape of ``benchmarks/kernel_shapes.py`` at its full N (the target's), with every
  backend of ``bench_kernels.py`` that runs here: top-k ``mm+topk`` (the baseline), ``reference``,
  ``faiss`` (when importable), ``triton`` (k ≤ 128) and ``cuda`` (the extension); the loss ``dense`` (the
  baseline), ``reference`` and ``triton``; the update ``reference`` (the baseline) and ``triton``. Inputs
  are drawn on the GPU (``bench_kernels.make_inputs``); agreement is ``bench_kernels``' check.
* ``selection``: ``bench_scl.py``'s selection at N = 12,936 and 1,000,000 over the paper's banks (default
  ``SelectiveConfig``: 2048 + 8 × 256 selection columns, k = P + N_neg = 507) for B = 64 anchors:
  ``original`` (the baseline: the [B, N] distance and a full sort per anchor), ``mm+topk`` (the dense
  [B, N] score, camera penalty and self exclusion, then ``topk``), ``fused`` (``SelectiveBanks.select``,
  ``bank_topk`` through the dispatch: the ``detail`` column names the backend it chose) and, when that
  backend is not the torch reference, ``fused_torch`` (the same with ``REIDSCALE_KERNELS=torch``). Every
  selection is compared with the original's (``bench_scl.selection_agreement``: near-ties aside).

Timing (``benchmarks/common.py``: ``time_calls``): two warm-up calls, the first timed apart
(``first_call_s``: compilation, extension loading, allocator warm-up), then as many timed calls as fit
``CASE_SECONDS`` at the second call's pace (between ``MIN_REPEATS`` and ``MAX_REPEATS``), each between
CUDA events; median, interquartile range, minimum and maximum; results are read back after the timing.

Budget (``--budget`` seconds): shapes run in order of their work, smallest first. Before each backend of a
shape its time is predicted from the seconds per FLOP that backend showed on the op's earlier shapes (a
first-call allowance added); a backend predicted past the deadline, or a shape whose memory need exceeds
the free GPU memory, is dropped with a message naming it. A shape whose baseline cannot run writes no row.
Rows are appended to ``--output`` after each shape, so a run cut short keeps what it measured.
``--device cpu`` is a smoke run of the same code (``perf_counter``, no peak memory), for small shapes.

    python benchmarks/gpu_timings.py --part kernels --budget 150
    python benchmarks/gpu_timings.py --part selection --sizes 12936
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # repo root: `benchmarks` and `reidscale` import when run as a script
from benchmarks.common import append_rows, choice_list, provenance, results_path, time_calls, to_host  # noqa: E402
from benchmarks.kernel_shapes import SHAPES, Shape  # noqa: E402

PARTS: tuple[str, ...] = ("kernels", "selection")
#: bank rows of the selection (bench_scl.py's default --sizes: Market-1501's training images, and 1M)
SELECTION_ROWS: tuple[int, ...] = (12_936, 1_000_000)
SELECTION_BATCH = 64  # global anchors (bench_scl.py's --batch on CUDA)
WARMUP = 2
MIN_REPEATS = 5
MAX_REPEATS = 100
CASE_SECONDS = 2.0  # timed repetitions per case, at most (MIN_REPEATS always run)
FIRST_CALL_ALLOWANCE_S = 5.0  # compile + load time assumed for a backend's first call when predicting
MM_BUDGET_MB = 1024  # mm+topk's score chunk, as bench_kernels.py's default
RESERVE_S = 5.0  # kept free at the end of the budget (appending rows, leaving)
ROW_COLUMNS: tuple[str, ...] = (
    "part", "op", "shape", "batch", "dim", "n_rows", "k", "dtype", "backend", "baseline", "detail",
    "warmup", "repeats", "first_call_s", "seconds_median", "seconds_iqr", "seconds_min", "seconds_max",
    "timer", "speedup_vs_baseline", "peak_extra_mb", "roofline_s", "pct_roofline", "agree", "agreement",
    "cuda_runtime", "triton", "driver",
)  # fmt: skip


# ------------------------------------------------------------------------------------------ budgeting
def fit_repeats(per_call_s: float, budget_s: float, low: int = MIN_REPEATS, high: int = MAX_REPEATS) -> int:
    """Timed repetitions that fit ``budget_s`` at ``per_call_s`` each, clamped to ``[low, high]``."""
    if per_call_s <= 0:
        return high
    return max(low, min(high, math.floor(budget_s / per_call_s)))


def predicted_seconds(flops: float, seconds_per_flop: float | None, calls: int) -> float:
    """Predicted seconds of one backend on a shape: ``calls`` calls at the pace seen before, plus the
    first-call allowance; 0 when nothing was seen yet (the first shape of an op always runs)."""
    if seconds_per_flop is None:
        return 0.0
    return calls * flops * seconds_per_flop + FIRST_CALL_ALLOWANCE_S


def by_work(names: list[str], shapes: dict[str, Shape]) -> list[str]:
    """Shape names in order of one call's floating-point work (smallest first; ties keep their order)."""
    from benchmarks.bench_kernels import work

    def flops(name: str) -> int:
        shape = shapes[name]
        return work(shape.op, shape.batch, shape.dim, shape.n_issue, "float32")[0]

    return sorted(names, key=flops)


class Deadline:
    """Seconds left until a moment fixed at construction (``time.monotonic``)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic() - RESERVE_S


# ------------------------------------------------------------------------------------------ measuring
def gpu_versions(device: str) -> dict[str, str]:
    """The columns naming the CUDA runtime of torch, triton's version and the driver (CUDA runs)."""
    import torch

    from benchmarks.gpu_check import driver_version
    from reidscale.utils.provenance import package_version

    return {
        "cuda_runtime": str(torch.version.cuda) if device == "cuda" else "",
        "triton": package_version("triton") or "not installed",
        "driver": (driver_version() or "unknown") if device == "cuda" else "",
    }


def measure(fn: Callable[[], Any], deadline: Deadline, device: str) -> tuple[Any, Any, int | None]:
    """Time ``fn`` (module docstring) → (stats, result on the host, peak extra bytes on CUDA, else None)."""
    import torch

    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
    budget = lambda per_call: fit_repeats(per_call, min(CASE_SECONDS, max(deadline.left(), 0.0)))  # noqa: E731
    stats, result = time_calls(fn, budget, WARMUP, cuda=cuda)
    peak = torch.cuda.max_memory_allocated() - start_bytes if cuda else None
    return stats, to_host(result), peak


def timing_columns(stats: Any, peak: int | None, baseline_median: float, device: str) -> dict[str, Any]:
    """The row's timing columns from a :class:`benchmarks.common.TimingStats`."""
    from benchmarks.common import CUDA_EVENTS, PERF_COUNTER

    return {
        "warmup": WARMUP,
        "repeats": len(stats.seconds),
        "first_call_s": f"{stats.first_call:.4g}",
        "seconds_median": f"{stats.median:.4g}",
        "seconds_iqr": f"{stats.iqr:.3g}",
        "seconds_min": f"{min(stats.seconds):.4g}",
        "seconds_max": f"{max(stats.seconds):.4g}",
        "timer": CUDA_EVENTS if device == "cuda" else PERF_COUNTER,
        "speedup_vs_baseline": f"{baseline_median / stats.median:.2f}",
        "peak_extra_mb": "" if peak is None else f"{peak / 2**20:.1f}",
    }


def _release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def kernels_requested(backend: str) -> Iterator[None]:
    """``REIDSCALE_KERNELS=backend`` inside the block (the dispatch reads it per call)."""
    from reidscale.kernels.dispatch import BACKEND_ENV

    before = os.environ.get(BACKEND_ENV)
    os.environ[BACKEND_ENV] = backend
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(BACKEND_ENV, None)
        else:
            os.environ[BACKEND_ENV] = before


# -------------------------------------------------------------------------------------------- kernels
def kernel_rows(
    name: str, args: argparse.Namespace, pace: dict[tuple[str, str], float], deadline: Deadline, roofline: Any
) -> list[dict[str, Any]]:
    """Time every backend of one shape that runs here and fits the budget; one row each (baseline first).

    ``pace``: (op, backend) → seconds per FLOP seen so far, updated here."""
    from benchmarks import bench_kernels as bk

    shape = SHAPES[name]
    case = bk.CaseSpec(shape, shape.n_issue, args.device, MM_BUDGET_MB, args.dtype)
    need, free = bk.needed_bytes(shape, shape.n_issue, MM_BUDGET_MB), bk.free_bytes(args.device)
    if need > 0.9 * free:
        print(f"[{name}] DROPPED: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free", flush=True)
        return []
    flops, bytes_moved = bk.work(shape.op, shape.batch, shape.dim, shape.n_issue, args.dtype)
    measured: dict[str, tuple[Any, Any, int]] = {}
    for backend, setup in bk.BACKENDS_OF[shape.op].items():
        why_not = bk.why_not_backend(backend, case)
        expected = predicted_seconds(flops, pace.get((shape.op, backend)), WARMUP + MIN_REPEATS)
        if why_not is not None:
            print(f"[{name}] {backend}: not run ({why_not})", flush=True)
        elif expected > deadline.left():
            left = max(deadline.left(), 0.0)
            print(f"[{name}] {backend}: DROPPED (predicted {expected:.0f} s, {left:.0f} s left)", flush=True)
        else:
            print(f"[{name}] {backend}: {shape.describe()} ...", flush=True)
            try:
                measured[backend] = measure(setup(case), deadline, args.device)
            except Exception as err:  # an out-of-memory or a kernel error drops this backend, not the phase
                print(f"[{name}] {backend}: FAILED {type(err).__name__}: {err}", flush=True)
            finally:
                _release()
        if not measured:
            print(f"[{name}] the baseline {backend} did not run: no rows for this shape", flush=True)
            return []
        if backend in measured:
            stats = measured[backend][0]
            pace[(shape.op, backend)] = stats.median / max(flops, 1)
            print(f"    median {stats.median * 1e3:.3f} ms, first call {stats.first_call:.2f} s", flush=True)
    return _kernel_table(name, case, measured, roofline.seconds(flops, bytes_moved)[0])


def _backend_detail(backend: str, device: str) -> str:
    """How the backend ran: faiss's index, the CUDA extension's origin, else empty."""
    from benchmarks.bench_kernels import backend_detail
    from reidscale.kernels.dispatch import backend_status

    return backend_status("cuda")[1] if backend == "cuda" else backend_detail(backend, device)


def _kernel_table(name: str, case: Any, measured: dict, roof_s: float) -> list[dict[str, Any]]:
    from benchmarks import bench_kernels as bk

    shape = case.shape
    base_name = next(iter(measured))
    base_stats, base_result, _ = measured[base_name]
    rows = []
    for backend, (stats, result, peak) in measured.items():
        found = bk.agreement(case, backend, base_result, result)
        detail = {key: found[key] for key in bk.AGREEMENT_ORDER if found[key] not in ("", "yes", "NO")}
        rows.append(
            {
                "part": "kernels",
                "op": bk.OP_NAMES[shape.op],
                "shape": name,
                "batch": shape.batch,
                "dim": shape.dim,
                "n_rows": shape.n_issue,
                "k": shape.k if shape.op == "topk" else "",
                "dtype": case.dtype,
                "backend": backend,
                "baseline": base_name,
                "detail": _backend_detail(backend, case.device),
                **timing_columns(stats, peak, base_stats.median, case.device),
                "roofline_s": f"{roof_s:.4g}",
                "pct_roofline": f"{100 * roof_s / stats.median:.1f}",
                "agree": found["agree"],
                "agreement": "; ".join(f"{key} {value}" for key, value in detail.items()),
            }
        )
        _release()
    return rows


# ------------------------------------------------------------------------------------------ selection
def dense_selection(
    queries: Any, banks: Any, k: int, self_index: Any, query_cams: Any, penalty: float
) -> tuple[Any, Any]:
    """mm+topk for the selection: the weighted score [B, N] (fp32, bank rows upcast in blocks), minus
    ``penalty`` on the same camera, self at −inf, then ``topk`` → (scores [B, k], ids [B, k]), padded with
    (−inf, −1) where fewer rows exist (as the other paths)."""
    import torch
    import torch.nn.functional as F

    weighted = banks.weighted_banks()
    scale = torch.cat([torch.full((bank.shape[1],), weight) for bank, weight in weighted])
    query = queries.float() * scale.to(queries.device)
    rows = banks.selection
    scores = torch.empty(query.shape[0], rows.shape[0], device=query.device)
    step = 65_536
    for start in range(0, rows.shape[0], step):
        scores[:, start : start + step] = query @ rows[start : start + step].float().T
    scores.sub_((query_cams[:, None] == banks.cameras[None, :]).float(), alpha=penalty)
    anchors, own = torch.arange(scores.shape[0], device=scores.device), self_index.clamp(min=0)
    scores[anchors, own] = torch.where(self_index >= 0, float("-inf"), scores[anchors, own])  # no host sync
    best, ids = scores.topk(min(k, scores.shape[1]), dim=1)
    ids = torch.where(torch.isfinite(best), ids, -1)
    missing = k - ids.shape[1]
    return F.pad(best, (0, missing), value=float("-inf")), F.pad(ids, (0, missing), value=-1)


def selection_rows(n_rows: int, deadline: Deadline, roofline: Any, device: str) -> list[dict[str, Any]]:
    """Time the selection's paths at ``n_rows`` (module docstring); one row each, the original first."""
    import torch

    from benchmarks import bench_kernels as bk
    from benchmarks import bench_scl as scl
    from reidscale.kernels.dispatch import choose_backend
    from reidscale.kernels.support import TRITON_TOPK_MAX_K
    from reidscale.objectives.selective.banks import Anchors
    from reidscale.objectives.selective.config import SelectiveConfig

    config = SelectiveConfig()
    dtype = scl.resolve_dtype("auto", n_rows, device, config, False)
    spec = scl.Spec(
        op="select", path="fused", n_rows=n_rows, batch=SELECTION_BATCH, bank_dtype=dtype, device=device,
        world_size=1, threads=os.cpu_count() or 1, warmup=WARMUP, repeats=MIN_REPEATS,
    )  # fmt: skip
    label = f"[select N={n_rows:,} {dtype}]"
    memory = scl.why_not_memory(spec, with_mixture=False)
    if memory is not None:
        print(f"{label} DROPPED: {memory}", flush=True)
        return []
    start = time.perf_counter()
    where = torch.device(device)
    banks = scl.build_selection_banks(spec, where, 0)
    anchors = scl.make_anchors(n_rows, spec.batch, config, spec.seed)
    scl.plant_anchor_rows(banks, anchors, spec.seed)
    anchors = Anchors(*(t.to(where) for t in (anchors.index, anchors.cameras, anchors.g, anchors.stripes)))
    print(f"{label} banks generated in {time.perf_counter() - start:.1f} s", flush=True)
    k, penalty = config.selection_k, config.cam_penalty / 2
    queries = torch.cat([anchors.g, anchors.stripes.flatten(1)], dim=1)
    too_wide = {"triton": f"k = {k} > {TRITON_TOPK_MAX_K}"} if k > TRITON_TOPK_MAX_K else {}
    chosen = choose_backend("bank_topk", where, too_wide)
    paths: dict[str, tuple[Callable[[], Any], str]] = {
        "original": (
            lambda: scl.original_topk(
                queries,
                banks.weighted_banks(),
                k,
                self_index=anchors.index,
                query_cams=anchors.cameras,
                bank_cams=banks.cameras,
                cam_penalty=penalty,
            ),
            "[B, N] distance via torch matmuls + full argsort",
        ),
        "mm+topk": (
            lambda: dense_selection(queries, banks, k, anchors.index, anchors.cameras, penalty),
            "[B, N] weighted score + topk",
        ),
        "fused": (lambda: banks.select(anchors, k), f"SelectiveBanks.select, bank_topk: {chosen}"),
    }
    if chosen != "torch":
        paths["fused_torch"] = (lambda: banks.select(anchors, k), "SelectiveBanks.select, bank_topk: torch")
    flops, bytes_moved = bk.work("topk", spec.batch, queries.shape[1], n_rows, dtype)
    measured = {}
    for path, (fn, detail) in paths.items():
        if deadline.left() <= 0:
            print(f"{label} {path}: DROPPED (no time left)", flush=True)
            continue
        print(f"{label} {path} ...", flush=True)
        try:
            with kernels_requested("torch") if path == "fused_torch" else contextlib.nullcontext():
                measured[path] = (*measure(fn, deadline, device), detail)
        except Exception as err:  # recorded per path; the others still run
            print(f"{label} {path}: FAILED {type(err).__name__}: {err}", flush=True)
        finally:
            _release()
    if "original" not in measured:
        print(f"{label} the original (baseline) did not run: no rows", flush=True)
        return []
    tol = bk.score_tolerance(queries.shape[1])
    base_stats, base_result = measured["original"][:2]
    roof_s = roofline.seconds(flops, bytes_moved)[0]
    rows = []
    for path, (stats, result, peak, detail) in measured.items():
        found = scl.selection_agreement(base_result, result, config.num_positives, tol)
        rows.append(
            {
                "part": "selection", "op": "select", "shape": f"scl_n{n_rows}", "batch": spec.batch,
                "dim": queries.shape[1], "n_rows": n_rows, "k": k, "dtype": dtype, "backend": path,
                "baseline": "original", "detail": detail,
                **timing_columns(stats, peak, base_stats.median, device),
                "roofline_s": f"{roof_s:.4g}", "pct_roofline": f"{100 * roof_s / stats.median:.1f}",
                "agree": "baseline" if path == "original" else found["agree"],
                "agreement": "" if path == "original" else (
                    f"untied {found['untied_mismatches']}; sets differ {found['set_mismatches']}; "
                    f"max score diff {found['max_score_diff']} (tol {found['tolerance']})"
                ),
            }
        )  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------ cli
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=PARTS, required=True)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for the whole part")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a smoke run only")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"kernels: a subset of {list(SHAPES)}")
    parser.add_argument("--sizes", default=",".join(map(str, SELECTION_ROWS)), help="selection: bank rows")
    parser.add_argument("--output", default=str(results_path("gpu_check")), help="CSV to append rows to")
    args = parser.parse_args(argv)
    args.shapes = choice_list(parser, "--shapes", args.shapes, list(SHAPES))
    try:
        args.sizes = [int(item) for item in args.sizes.split(",") if item.strip()]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < SELECTION_BATCH:
        parser.error(f"--sizes: expected bank sizes >= {SELECTION_BATCH}, got {args.sizes}")
    if args.budget <= RESERVE_S:
        parser.error(f"--budget must exceed {RESERVE_S} s, got {args.budget}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU (torch.cuda.is_available() is False)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.budget)
    import torch

    from benchmarks.bench_kernels import measure_roofline

    torch.set_num_threads(os.cpu_count() or 1)
    roofline = measure_roofline(args.device)
    print(
        f"roofline: {roofline.flops_per_s / 1e12:.1f} TFLOP/s (matmul), {roofline.bytes_per_s / 1e9:.0f} GB/s"
        " (copy)",
        flush=True,
    )
    stamp, versions = provenance(), gpu_versions(args.device)
    pace: dict[tuple[str, str], float] = {}
    units = by_work(args.shapes, SHAPES) if args.part == "kernels" else args.sizes
    written = 0
    for unit in units:
        if deadline.left() <= 0:
            print(f"[{unit}] DROPPED: the {args.budget:.0f} s budget is spent", flush=True)
            continue
        if args.part == "kernels":
            rows = kernel_rows(unit, args, pace, deadline, roofline)
        else:
            rows = selection_rows(unit, deadline, roofline, args.device)
        if rows:
            rows = [{**dict.fromkeys(ROW_COLUMNS, ""), **row, **versions} for row in rows]
            append_rows(args.output, rows, stamp)
            written += len(rows)
    print(f"{written} rows appended to {results_path(args.output)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
