"""Benchmark: memory-bank top-k (``bank_topk``) and the whole-bank contrastive loss against plain torch.

Top-k backends (``TOPK_BACKENDS``: name → module-level setup function; a backend that cannot run here is
reported as "not run (reason)" and writes no row):

* ``mm+topk``: the baseline. ``Q @ M_chunkᵀ`` then ``torch.topk`` per bank chunk (chunk = as many rows as
  fit ``--mm-budget-mb`` of B×chunk fp32 scores), merged with another ``torch.topk`` (no full sort).
* ``reference``: ``reidscale.kernels.reference.bank_topk`` with its default bank chunk (8192 rows).
* ``faiss``: exact ``IndexFlatIP`` (GPU index when faiss sees a GPU and ``--device cuda``, else CPU). The
  index is built in the case's setup (not timed); it holds its own copy of the bank (fp32).
* ``triton``: the fused Triton kernel (CUDA tensors; k ≤ 128).
* ``cuda``: the CUDA extension op ``reidscale._C`` (CUDA tensors; k ≤ 4096).

Loss: ``bank_contrastive_loss_full`` (``bank_chunk=LOSS_BANK_CHUNK``) and, on CUDA tensors, the Triton
one-pass kernel, forward + backward against a dense torch reference (the B×N logits, ``log_softmax``,
autograd), P=4 positives per query, temperature 0.1.

Shapes (the sizes the kernels target); N is the bank size. ``--scale full`` runs the target N; ``--scale cpu``
divides N by the per-shape divisor below so that the whole CPU run takes ~4 minutes on 2 cores. Every row
carries ``n_issue`` (the target N), ``n_run``, ``n_divisor`` and ``reduced``: a reduced row is never the
target shape.

====================  =====  =====  ===========  ====  ===========
shape                 B      D      N (target)   k     cpu divisor
====================  =====  =====  ===========  ====  ===========
b1024_d256_n1M        1024   256    1,000,000    256   32
b4096_d2048_n4M       4096   2048   4,000,000    1024  256
b256_d128_n10M        256    128    10,000,000   64    64
selective_market      64     4096   12,936       507   1
====================  =====  =====  ===========  ====  ===========

``selective_market`` is the selective-contrastive case: N = 12,936 = the Market-1501 training set ("13k").
A shape whose inputs do not fit the free memory (bank + faiss copy + scores) is skipped with a message.
Loss shapes: ``loss_b256_d256_n65536``, ``loss_b1024_d256_n131072`` and ``loss_selective_market``
(B=64, D=4096, N=12,936); none is reduced.

Roofline (same run, same device): the "peak" FLOP/s is the achieved FLOP/s of a large matmul
(``ROOFLINE_MATMUL`` square, fp32 on CPU, bf16 on CUDA) and the bandwidth is a large tensor copy's
(read + write bytes) / time, each measured before and after the cases, the higher kept (the box may be
shared; a pct_roofline above 100 means the peak was measured under load). For top-k, roofline time =
max(2·B·N·D / peak, N·D·bytes / bandwidth); for the loss, max(4·B·N·D / peak, 2·N·D·bytes / bandwidth)
(forward product + backward softmax·M product, the bank read once per pass).
``pct_roofline`` = roofline time / measured median time × 100.

Agreement (same run): every top-k backend is compared with ``mm+topk`` position by position. A position
whose index differs counts as ``untied`` when the float64 scores of the two indices differ by more than
``score_tolerance(D)`` = 2·D·2⁻²⁴ (twice the worst-case fp32 dot-product rounding for unit rows): only
near-ties may swap. ``max_score_diff`` is the largest |score difference| over all positions. The loss
reports |loss difference| and the largest gradient difference relative to the largest gradient entry.

Peak extra memory: each case runs in a fresh process (``benchmarks/common.py``, method in every row).

    python benchmarks/bench_kernels.py --scale cpu
    python benchmarks/bench_kernels.py --scale full --device cuda --shapes b1024_d256_n1M,selective_market
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: `benchmarks` imports
from benchmarks.common import Measurement, append_rows, measure_isolated, provenance, results_path, run_timed
from reidscale.kernels.reference import bank_contrastive_loss_full
from reidscale.kernels.reference import bank_topk as reference_bank_topk

SEED = 0
TEMPERATURE = 0.1
NUM_POSITIVES = 4
LOSS_BANK_CHUNK = 8192
ROOFLINE_MATMUL = 4096
ROOFLINE_COPY_BYTES = 512 * 2**20
SCORE_BYTES = 4  # fp32 scores
#: feature dtypes of ``--dtype``
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Shape:
    """One benchmark shape: ``op`` is "topk" or "loss"; ``k`` is unused (0) for the loss."""

    op: str
    batch: int
    dim: int
    n_issue: int
    k: int
    cpu_divisor: int

    def n_run(self, scale: str) -> int:
        return self.n_issue if scale == "full" else max(1, self.n_issue // self.cpu_divisor)


SHAPES: dict[str, Shape] = {
    "b1024_d256_n1M": Shape("topk", 1024, 256, 1_000_000, 256, 32),
    "b4096_d2048_n4M": Shape("topk", 4096, 2048, 4_000_000, 1024, 256),
    "b256_d128_n10M": Shape("topk", 256, 128, 10_000_000, 64, 64),
    "selective_market": Shape("topk", 64, 4096, 12_936, 507, 1),
    "loss_b256_d256_n65536": Shape("loss", 256, 256, 65_536, 0, 1),
    "loss_b1024_d256_n131072": Shape("loss", 1024, 256, 131_072, 0, 1),
    "loss_selective_market": Shape("loss", 64, 4096, 12_936, 0, 1),
}


@dataclass(frozen=True)
class CaseSpec:
    """What a backend's setup gets: the shape, the bank rows actually run, device, mm budget, dtype."""

    shape: Shape
    n_rows: int
    device: str
    budget_mb: int
    dtype: str

    def inputs(self, device: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return make_inputs(self.shape.batch, self.shape.dim, self.n_rows, device or self.device, self.dtype)


# ------------------------------------------------------------------------------------------------ inputs


def make_inputs(
    batch: int, dim: int, n_rows: int, device: str, dtype: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised random (queries [B, D], bank [N, D]) in ``dtype``, identical in every process."""
    if min(batch, dim, n_rows) < 1:
        raise ValueError(f"batch, dim and n_rows must be >= 1, got {batch}, {dim}, {n_rows}")
    generator = torch.Generator().manual_seed(SEED)
    queries = torch.randn(batch, dim, generator=generator)
    bank = torch.randn(n_rows, dim, generator=generator)
    queries.div_(queries.norm(dim=1, keepdim=True))
    bank.div_(bank.norm(dim=1, keepdim=True))
    return queries.to(device, DTYPES[dtype]), bank.to(device, DTYPES[dtype])


def make_positives(batch: int, n_rows: int, device: str) -> torch.Tensor:
    """[B, P] distinct bank rows per query (P = min(NUM_POSITIVES, N)), spread over the bank."""
    count = min(NUM_POSITIVES, n_rows)
    generator = torch.Generator().manual_seed(SEED + 1)
    offsets = torch.randint(0, n_rows, (batch, 1), generator=generator)
    spread = torch.arange(count)[None, :] * (n_rows // count)
    return ((offsets + spread) % n_rows).to(device)


# ------------------------------------------------------------------------------------ top-k backends


def mm_topk(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, ...]:
    """Baseline: per bank chunk [chunk] rows, ``Q @ chunkᵀ`` + ``topk``, merged by ``topk`` → [B, k] ×2."""
    best_scores = best_ids = None
    for start in range(0, bank.shape[0], chunk):
        scores = queries @ bank[start : start + chunk].T  # [B, chunk]
        values, ids = scores.topk(min(k, scores.shape[1]), dim=1, sorted=False)
        ids = ids + start
        if best_scores is not None:
            values, ids = torch.cat([best_scores, values], 1), torch.cat([best_ids, ids], 1)
            values, pick = values.topk(min(k, values.shape[1]), dim=1, sorted=False)
            ids = ids.gather(1, pick)
        best_scores, best_ids = values, ids
    order = best_scores.argsort(dim=1, descending=True, stable=True)
    return best_scores.gather(1, order), best_ids.gather(1, order)


def mm_chunk_rows(batch: int, n_rows: int, k: int, budget_mb: int) -> int:
    """Bank rows per mm+topk chunk: B×chunk fp32 scores within ``budget_mb`` (at least k, at most N)."""
    return min(n_rows, max(k, budget_mb * 2**20 // (batch * SCORE_BYTES)))


def setup_mm_topk(case: CaseSpec) -> Callable[[], Any]:
    queries, bank = case.inputs()
    chunk = mm_chunk_rows(case.shape.batch, case.n_rows, case.shape.k, case.budget_mb)
    return lambda: tuple(t.cpu() for t in mm_topk(queries, bank, case.shape.k, chunk))


def setup_reference(case: CaseSpec) -> Callable[[], Any]:
    queries, bank = case.inputs()
    return lambda: tuple(t.cpu() for t in reference_bank_topk(queries, bank, case.shape.k))


def _faiss_gpu(faiss_module: Any, device: str) -> bool:
    gpus = faiss_module.get_num_gpus() if hasattr(faiss_module, "StandardGpuResources") else 0
    return device.startswith("cuda") and gpus > 0


def setup_faiss(case: CaseSpec) -> Callable[[], Any]:
    import faiss

    queries, bank = case.inputs("cpu")
    index = faiss.IndexFlatIP(case.shape.dim)
    index.add(bank.float().numpy())
    del bank
    if _faiss_gpu(faiss, case.device):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    query_array = queries.float().numpy()

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        scores, ids = index.search(query_array, case.shape.k)
        return torch.from_numpy(scores), torch.from_numpy(ids)

    return run


def setup_triton_topk(case: CaseSpec) -> Callable[[], Any]:
    from reidscale.kernels.triton import triton_bank_topk

    queries, bank = case.inputs()
    return lambda: tuple(t.cpu() for t in triton_bank_topk(queries, bank, case.shape.k))


def setup_cuda_topk(case: CaseSpec) -> Callable[[], Any]:
    from reidscale.kernels.cuda import cuda_bank_topk

    queries, bank = case.inputs()
    return lambda: tuple(t.cpu() for t in cuda_bank_topk(queries, bank, case.shape.k))


#: name → setup(case) returning the timed callable; "mm+topk" is the baseline.
TOPK_BACKENDS: dict[str, Callable[[CaseSpec], Callable[[], Any]]] = {
    "mm+topk": setup_mm_topk,
    "reference": setup_reference,
    "faiss": setup_faiss,
    "triton": setup_triton_topk,
    "cuda": setup_cuda_topk,
}


def why_not_topk_backend(name: str, case: CaseSpec) -> str | None:
    """None if top-k backend ``name`` can run ``case`` here, else the reason (printed, no row written)."""
    if name == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError as err:
            return f"faiss not importable ({err})"
        return None
    return _why_not_kernel(name, case)


def _why_not_kernel(name: str, case: CaseSpec) -> str | None:
    """Reason the Triton / CUDA kernels cannot run ``case`` (they need CUDA tensors), or None."""
    if name not in ("triton", "cuda"):
        return None
    if not case.device.startswith("cuda"):
        return f"the {name} kernel runs on CUDA tensors (--device {case.device})"
    from reidscale.kernels.dispatch import TRITON_TOPK_MAX_K, backend_status

    usable, reason = backend_status(name)
    if not usable:
        return reason
    if name == "triton" and case.shape.op == "topk" and case.shape.k > TRITON_TOPK_MAX_K:
        return f"k = {case.shape.k} > {TRITON_TOPK_MAX_K} (the Triton kernel would run the torch reference)"
    return None


# ------------------------------------------------------------------------------------------ loss cases


def dense_loss(queries: torch.Tensor, bank: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Dense reference: [B, N] logits, log_softmax, uniform weights over the P positives → scalar."""
    log_probs = torch.log_softmax(queries @ bank.T / TEMPERATURE, dim=1)  # [B, N]
    return -log_probs.gather(1, positives).mean(dim=1).mean()


def _loss_case(loss_fn: Callable[..., torch.Tensor], case: CaseSpec) -> Callable[[], Any]:
    queries, bank = case.inputs()
    positives = make_positives(case.shape.batch, case.n_rows, case.device)

    def run() -> tuple[float, torch.Tensor]:
        leaf = queries.clone().requires_grad_(True)
        loss = loss_fn(leaf, bank, positives)
        loss.backward()
        return float(loss.detach()), leaf.grad.float().cpu()

    return run


def setup_loss_dense(case: CaseSpec) -> Callable[[], Any]:
    return _loss_case(dense_loss, case)


def _streamed_loss(queries: torch.Tensor, bank: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    return bank_contrastive_loss_full(queries, bank, positives, None, TEMPERATURE, bank_chunk=LOSS_BANK_CHUNK)


def setup_loss_reference(case: CaseSpec) -> Callable[[], Any]:
    return _loss_case(_streamed_loss, case)


def _triton_loss(queries: torch.Tensor, bank: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    from reidscale.kernels.reference_loss import loss_from_terms, needs_query_grad
    from reidscale.kernels.triton import triton_loss_full_terms

    weights = torch.full(positives.shape, 1.0 / positives.shape[1], device=positives.device)
    terms = triton_loss_full_terms(queries, bank, positives, weights, TEMPERATURE, needs_query_grad(queries))
    return loss_from_terms(queries, *terms)


def setup_loss_triton(case: CaseSpec) -> Callable[[], Any]:
    return _loss_case(_triton_loss, case)


#: loss backends, same contract as TOPK_BACKENDS; "dense" is the baseline.
LOSS_BACKENDS: dict[str, Callable[[CaseSpec], Callable[[], Any]]] = {
    "dense": setup_loss_dense,
    "reference": setup_loss_reference,
    "triton": setup_loss_triton,
}


# --------------------------------------------------------------------------------------------- roofline


@dataclass(frozen=True)
class Roofline:
    """The device's assumed peak: achieved FLOP/s of a large matmul and GB/s of a large copy."""

    flops_per_s: float
    bytes_per_s: float
    source: str

    def seconds(self, flops: float, bytes_moved: float) -> tuple[float, str]:
        """(roofline time, "compute" or "memory") for a kernel doing ``flops`` and moving ``bytes_moved``."""
        compute, memory = flops / self.flops_per_s, bytes_moved / self.bytes_per_s
        return (compute, "compute") if compute >= memory else (memory, "memory")

    def best_with(self, other: Roofline) -> Roofline:
        """The higher FLOP/s and the higher bandwidth of two measurements (less disturbed by load)."""
        return Roofline(
            max(self.flops_per_s, other.flops_per_s),
            max(self.bytes_per_s, other.bytes_per_s),
            f"{self.source}; max of the measurements before and after the cases",
        )


def _best_seconds(fn: Callable[[], Any], repeats: int, cuda: bool) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def measure_roofline(device: str) -> Roofline:
    """Measure the matmul FLOP/s (fp32 on CPU, bf16 on CUDA) and copy bandwidth on ``device`` now."""
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    size = ROOFLINE_MATMUL * (2 if cuda else 1)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flops = 2 * size**3 / _best_seconds(lambda: a @ b, 5, cuda)
    src = torch.empty(ROOFLINE_COPY_BYTES // 4, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2 * ROOFLINE_COPY_BYTES / _best_seconds(lambda: dst.copy_(src), 3, cuda)
    source = (
        f"measured this run: {size}x{size} {str(dtype).removeprefix('torch.')} matmul FLOP/s, "
        f"{ROOFLINE_COPY_BYTES >> 20} MiB copy (read+write) B/s, best of 5 / 3"
    )
    return Roofline(flops, bandwidth, source)


# -------------------------------------------------------------------------------------------- agreement


def score_tolerance(dim: int, dtype: str = "float32") -> float:
    """Twice the worst-case fp32 rounding of a D-term dot product of unit rows, 2·D·2⁻²⁴, plus the rounding
    of a score to ``dtype`` (the baseline's ``mm`` returns scores in the feature dtype): 2⁻⁸ for bfloat16,
    2⁻¹¹ for float16."""
    output_rounding = {"float32": 0.0, "bfloat16": 2.0**-8, "float16": 2.0**-11}[dtype]
    return 2 * dim * 2.0**-24 + output_rounding


def exact_scores(queries: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor):
    """float64 q[rows[i]] · m[ids[i]] for each pair i ([P] → [P]), in blocks of ~16 M elements."""
    step = max(1, 2**24 // queries.shape[1])
    out = [
        (queries[rows[s : s + step]].double() * bank[ids[s : s + step]].double()).sum(dim=1)
        for s in range(0, rows.numel(), step)
    ]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def topk_agreement(
    queries: torch.Tensor,
    bank: torch.Tensor,
    base: tuple[torch.Tensor, ...],
    other: tuple[torch.Tensor, ...],
    dtype: str = "float32",
) -> dict[str, Any]:
    """Compare a backend's (scores [B, k], ids [B, k]) with the baseline's, position by position."""
    if base[0].shape != other[0].shape or base[1].shape != other[1].shape:
        raise ValueError(f"other must have shape {tuple(base[0].shape)}, got {tuple(other[0].shape)}")
    tol = score_tolerance(queries.shape[1], dtype)
    base_ids, other_ids = base[1].long(), other[1].long()
    rows, cols = (base_ids != other_ids).nonzero(as_tuple=True)
    if (other_ids[rows, cols] < 0).any():
        untied = int((other_ids[rows, cols] < 0).sum())
    else:
        gap = exact_scores(queries, bank, rows, base_ids[rows, cols]) - exact_scores(
            queries, bank, rows, other_ids[rows, cols]
        )
        untied = int((gap.abs() > tol).sum())
    score_diff = float((base[0].double() - other[0].double()).abs().max())
    return {
        "idx_match_frac": f"{1 - rows.numel() / base_ids.numel():.6f}",
        "untied_mismatches": untied,
        "max_score_diff": f"{score_diff:.3e}",
        "tolerance": f"{tol:.3e}",
        "agree": "yes" if untied == 0 and score_diff <= tol else "NO",
    }


def loss_agreement(base: tuple[float, torch.Tensor], other: tuple[float, torch.Tensor]) -> dict[str, Any]:
    """|loss difference| and max |grad difference| / max |grad| against the dense baseline."""
    loss_diff = abs(base[0] - other[0])
    grad_diff = float((base[1] - other[1]).abs().max() / base[1].abs().max().clamp(min=1e-30))
    tol = 1e-4
    return {
        "loss_abs_diff": f"{loss_diff:.3e}",
        "grad_rel_diff": f"{grad_diff:.3e}",
        "tolerance": f"{tol:.0e}",
        "agree": "yes" if loss_diff <= tol * max(1.0, abs(base[0])) and grad_diff <= tol else "NO",
    }


# ------------------------------------------------------------------------------------------------- runs


def free_bytes(device: str) -> int:
    """Bytes free on ``device`` now: ``MemAvailable`` on CPU, ``cudaMemGetInfo`` on CUDA."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise ValueError("/proc/meminfo has no MemAvailable")


def needed_bytes(shape: Shape, n_rows: int, budget_mb: int) -> int:
    """Rough fp32 peak of the largest case: bank twice (inputs + faiss copy, or loss logits) + work."""
    bank = n_rows * shape.dim * SCORE_BYTES
    if shape.op == "loss":
        return bank + 4 * shape.batch * n_rows * SCORE_BYTES
    sort_work = 4 * shape.batch * (shape.k + 8192) * 12
    return 2 * bank + budget_mb * 2**20 + sort_work


def shape_fields(name: str, shape: Shape, args: argparse.Namespace) -> dict[str, Any]:
    n_run = shape.n_run(args.scale)
    divisor = shape.n_issue / n_run
    return {
        "op": "topk" if shape.op == "topk" else "loss_fwd_bwd",
        "shape": name,
        "scale": args.scale,
        "batch": shape.batch,
        "dim": shape.dim,
        "n_issue": shape.n_issue,
        "n_run": n_run,
        "n_divisor": f"{divisor:g}",
        "reduced": f"yes (N = n_issue / {divisor:g})" if n_run != shape.n_issue else "no",
        "k": shape.k if shape.op == "topk" else "",
        "positives": "" if shape.op == "topk" else min(NUM_POSITIVES, n_run),
        "dtype": args.dtype,
        "device_arg": args.device,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": f"{os.getloadavg()[0]:.2f}",
    }


def chunk_rows(shape: Shape, backend: str, n_rows: int, budget_mb: int) -> str:
    from reidscale.kernels.reference_topk import DEFAULT_BANK_CHUNK

    if shape.op == "loss":
        return str(n_rows if backend == "dense" else min(LOSS_BANK_CHUNK, n_rows))
    if backend == "mm+topk":
        return str(mm_chunk_rows(shape.batch, n_rows, shape.k, budget_mb))
    return str(min(DEFAULT_BANK_CHUNK, n_rows)) if backend == "reference" else ""


def timing_fields(measured: Measurement, baseline: Measurement) -> dict[str, Any]:
    return {
        "repeats": len(measured.seconds),
        "seconds_median": f"{measured.median_seconds:.4f}",
        "seconds_min": f"{min(measured.seconds):.4f}",
        "peak_extra_mb": f"{measured.peak_bytes / 2**20:.1f}",
        "memory_method": measured.memory_method,
        "speedup_vs_baseline": f"{baseline.median_seconds / measured.median_seconds:.2f}",
        "mem_ratio_vs_baseline": f"{measured.peak_bytes / max(baseline.peak_bytes, 1):.3f}",
    }


def roofline_fields(row: dict[str, Any], roofline: Roofline) -> dict[str, Any]:
    """Roofline columns of a row (uses its op, batch, dim, n_run and seconds_median)."""
    passes = 1 if row["op"] == "topk" else 2
    bank_bytes = row["n_run"] * row["dim"] * DTYPES[row["dtype"]].itemsize
    flops = 2 * passes * row["batch"] * row["n_run"] * row["dim"]
    roof_seconds, bound = roofline.seconds(flops, passes * bank_bytes)
    return {
        "flops": flops,
        "roofline_seconds": f"{roof_seconds:.4f}",
        "roofline_bound": bound,
        "pct_roofline": f"{100 * roof_seconds / float(row['seconds_median']):.1f}",
        "peak_gflops_assumed": f"{roofline.flops_per_s / 1e9:.1f}",
        "bandwidth_gbs_assumed": f"{roofline.bytes_per_s / 1e9:.1f}",
        "roofline_source": roofline.source,
    }


NOT_APPLICABLE = {
    "topk": {"loss_abs_diff": "", "grad_rel_diff": ""},
    "loss": {"idx_match_frac": "", "untied_mismatches": "", "max_score_diff": ""},
}
AGREEMENT_ORDER = (
    "idx_match_frac",
    "untied_mismatches",
    "max_score_diff",
    "loss_abs_diff",
    "grad_rel_diff",
    "tolerance",
    "agree",
)


def run_shape(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure every backend of one shape (each in a fresh process), check agreement; one row each."""
    shape = SHAPES[name]
    n_rows = shape.n_run(args.scale)
    need, free = needed_bytes(shape, n_rows, args.mm_budget_mb), free_bytes(args.device)
    if need > free:
        print(f"[{name}] SKIPPED: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free", flush=True)
        return []
    case = CaseSpec(shape, n_rows, args.device, args.mm_budget_mb, args.dtype)
    backends = TOPK_BACKENDS if shape.op == "topk" else LOSS_BACKENDS
    cuda = args.device.startswith("cuda")
    measured: dict[str, Measurement] = {}
    for backend, setup in backends.items():
        reason = why_not_topk_backend(backend, case) if shape.op == "topk" else _why_not_kernel(backend, case)
        if reason is not None:
            print(f"[{name}] {backend}: not run ({reason})", flush=True)
            continue
        print(f"[{name}] {backend}: N={n_rows}, {args.repeats} repeat(s) ...", flush=True)
        measured[backend] = measure_isolated(setup, (case,), args.repeats, cuda)
    base_name = next(iter(backends))
    queries, bank = case.inputs("cpu")
    rows = []
    for backend, result in measured.items():
        if shape.op == "topk":
            agreement = topk_agreement(queries, bank, measured[base_name].result, result.result, args.dtype)
        else:
            agreement = loss_agreement(measured[base_name].result, result.result)
        agreement = {**agreement, **NOT_APPLICABLE[shape.op]}
        rows.append(
            {
                **shape_fields(name, shape, args),
                "backend": backend,
                "baseline": base_name,
                "chunk_rows": chunk_rows(shape, backend, n_rows, args.mm_budget_mb),
                **timing_fields(result, measured[base_name]),
                **{key: agreement[key] for key in AGREEMENT_ORDER},
            }
        )
    return rows


def backend_detail(backend: str, device: str) -> str:
    """Which faiss index ran (GPU or CPU, threads); empty for the torch backends."""
    if backend != "faiss":
        return ""
    import faiss

    if _faiss_gpu(faiss, device):
        return "IndexFlatIP on GPU 0"
    return f"IndexFlatIP on CPU, {faiss.omp_get_max_threads()} OpenMP threads"


TABLE_COLUMNS = (
    "shape",
    "op",
    "n_run",
    "reduced",
    "backend",
    "seconds_median",
    "peak_extra_mb",
    "speedup_vs_baseline",
    "mem_ratio_vs_baseline",
    "pct_roofline",
    "roofline_bound",
    "idx_match_frac",
    "untied_mismatches",
    "max_score_diff",
    "loss_abs_diff",
    "grad_rel_diff",
    "agree",
)


def print_table(rows: list[dict[str, Any]]) -> None:
    widths = {col: max(len(col), *(len(str(row[col])) for row in rows)) for col in TABLE_COLUMNS}
    print("  ".join(col.ljust(widths[col]) for col in TABLE_COLUMNS))
    for row in rows:
        print("  ".join(str(row[col]).ljust(widths[col]) for col in TABLE_COLUMNS))
    first = rows[0]
    print(
        f"roofline: {first['peak_gflops_assumed']} GFLOP/s, {first['bandwidth_gbs_assumed']} GB/s "
        f"({first['roofline_source']})"
    )
    if any(row["reduced"] != "no" for row in rows):
        print("NOTE: rows with reduced != 'no' ran a smaller bank than the target shape (n_run < n_issue).")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("cpu", "full"), default="cpu", help="cpu: N / divisor; full: N")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {list(SHAPES)}")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (median reported)")
    parser.add_argument("--mm-budget-mb", type=int, default=1024, help="mm+topk: B x chunk score budget")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="queries and bank dtype")
    parser.add_argument("--output", default=str(results_path("kernels")), help="CSV file to append rows to")
    args = parser.parse_args(argv)
    shapes = [name.strip() for name in args.shapes.split(",") if name.strip()]
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown or not shapes:
        parser.error(f"--shapes: unknown {unknown or 'empty list'}; choose from {list(SHAPES)}")
    for name in ("repeats", "mm_budget_mb"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error(f"--device must be cpu or cuda[:i], got {args.device!r}")
    args.shapes = shapes
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = provenance()
    print(f"{stamp['device']} | torch {stamp['torch']} | commit {stamp['commit']} | scale {args.scale}")
    before = measure_roofline(args.device)
    rows = [row for name in args.shapes for row in run_shape(name, args)]
    if not rows:
        print("no shape fitted this machine: nothing appended")
        return 1
    roofline = before.best_with(measure_roofline(args.device))
    rows = [
        {
            **row,
            **roofline_fields(row, roofline),
            "backend_detail": backend_detail(row["backend"], args.device),
        }
        for row in rows
    ]
    print_table(rows)
    path = append_rows(args.output, rows, stamp)
    print(f"appended {len(rows)} rows to {path}")
    return 0 if all(row["agree"] == "yes" for row in rows) else 1


if __name__ == "__main__":
    run_timed(main)
