"""Benchmark: memory-bank top-k (``bank_topk``), the whole-bank contrastive loss and the bank update against
plain torch.

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

shape                 B      D      N (target)   k     cpu divisor
====================  =====  =====  ===========  ====  ===========
b1024_d256_n1M        1024   256    1,000,000    256   32
b4096_d2048_n4M       4096   2048   4,000,000    1024  256
b256_d128_n10M        256    128    10,000,000   64    64
selective_market      64     4096   12,936       507   1
====================  =====  =====  ===========  ====  ===========
=======
Bank update (``bank_update``, B distinct rows, momentum 0.5, renormalised): ``reference`` (the baseline, the
torch definition) and ``triton`` (CUDA tensors). Each timed call updates the same rows again; agreement is
checked apart, one call of each backend from the same start, max |Δ| against the reference.

Shapes: ``benchmarks/kernel_shapes.py`` (the table, the target N and the CPU divisors). ``--scale full``
runs the target N, ``--scale cpu`` divides it. Every row carries ``n_issue`` (the target N), ``n_run``,
``n_divisor`` and ``reduced``: a reduced row is never the target shape. A shape whose inputs do not fit
the free memory (bank + faiss copy + scores) is skipped with a message. Inputs are drawn with a generator
on the device (the CPU's, or the GPU's with ``--device cuda``), so every process of one run sees the same
numbers.

Timing (``benchmarks/common.py``: ``time_calls``): ``--warmup`` calls first, the first of them timed apart
(``first_call_s``: Triton compilation, CUDA extension loading, allocator warm-up), then ``--repeats`` (≥ 5)
timed calls, each with CUDA events on a GPU or ``perf_counter`` on the CPU; the rows give the median, the
interquartile range (``seconds_iqr``), the minimum and maximum. Results stay on the device during the timed
calls and are copied to the host afterwards.

Roofline (same run, same device): the "peak" FLOP/s is the achieved FLOP/s of a large matmul
(``ROOFLINE_MATMUL`` square, fp32 on CPU, bf16 on CUDA) and the bandwidth is a large tensor copy's
(read + write bytes) / time, each measured before and after the cases, the higher kept (the box may be
shared; a pct_roofline above 100 means the peak was measured under load). For top-k, roofline time =
max(2·B·N·D / peak, N·D·bytes / bandwidth); for the loss, max(4·B·N·D / peak, 2·N·D·bytes / bandwidth)
(forward product + backward softmax·M product, the bank read once per pass); for the update,
max(6·B·D / peak, 3·B·D·bytes / bandwidth) (B rows and B features read, B rows written).
``pct_roofline`` = roofline time / measured median time × 100.

Agreement (same run): every top-k backend is compared with ``mm+topk`` position by position. A position
whose index differs counts as ``untied`` when the float64 scores of the two indices differ by more than
``score_tolerance(D)`` = 2·D·2⁻²⁴ (twice the worst-case fp32 dot-product rounding for unit rows): only
near-ties may swap. ``max_score_diff`` is the largest |score difference| over all positions. The loss
reports |loss difference| and the largest gradient difference relative to the largest gradient entry;
the update the largest |bank difference| (``bank_max_abs_diff``) against one ulp-scale bound per dtype.

Peak extra memory: each case runs in a fresh process (``benchmarks/common.py``, method in every row).

    python benchmarks/bench_kernels.py --scale cpu
    python benchmarks/bench_kernels.py --scale cpu --shapes selective_market --repeats 5 --warmup 1
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
from benchmarks.common import (
    Measurement,
    append_rows,
    choice_list,
    measure_isolated,
    provenance,
    results_path,
    run_timed,
)
from benchmarks.kernel_shapes import SHAPES, Shape
from reidscale.kernels.reference import bank_contrastive_loss_full
from reidscale.kernels.reference import bank_topk as reference_bank_topk
from reidscale.kernels.reference import bank_update as reference_bank_update

SEED = 0
TEMPERATURE = 0.1
NUM_POSITIVES = 4
LOSS_BANK_CHUNK = 8192
UPDATE_MOMENTUM = 0.5
#: largest |bank difference| the update may show against the reference, per bank dtype (as the GPU tests)
UPDATE_TOLERANCE = {"float32": 1e-6, "bfloat16": 2.0**-8, "float16": 2.0**-11}
MIN_REPEATS = 5
ROOFLINE_MATMUL = 4096
ROOFLINE_COPY_BYTES = 512 * 2**20
SCORE_BYTES = 4  # fp32 scores
#: the ``op`` column of each shape op
OP_NAMES = {"topk": "topk", "loss": "loss_fwd_bwd", "update": "bank_update"}
#: feature dtypes of ``--dtype``
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: the kernel op (``reidscale.kernels.support.OPS``) each shape op times
KERNEL_OPS = {"topk": "bank_topk", "loss": "bank_contrastive_loss", "update": "bank_update"}


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
    """L2-normalised random (queries [B, D], bank [N, D]) in ``dtype``, identical in every process.

    Drawn on ``device``'s own generator (a 4M × 2048 bank takes seconds on a GPU, minutes on a CPU), so a
    CUDA run and a CPU run see different numbers; every process on one kind of device sees the same.
    """
    if min(batch, dim, n_rows) < 1:
        raise ValueError(f"batch, dim and n_rows must be >= 1, got {batch}, {dim}, {n_rows}")
    generator = torch.Generator(device).manual_seed(SEED)
    queries = torch.randn(batch, dim, generator=generator, device=device)
    bank = torch.randn(n_rows, dim, generator=generator, device=device)
    queries.div_(queries.norm(dim=1, keepdim=True))
    bank.div_(bank.norm(dim=1, keepdim=True))
    return queries.to(DTYPES[dtype]), bank.to(DTYPES[dtype])


def make_positives(batch: int, n_rows: int, device: str) -> torch.Tensor:
    """[B, P] distinct bank rows per query (P = min(NUM_POSITIVES, N)), spread over the bank."""
    count = min(NUM_POSITIVES, n_rows)
    generator = torch.Generator().manual_seed(SEED + 1)
    offsets = torch.randint(0, n_rows, (batch, 1), generator=generator)
    spread = torch.arange(count)[None, :] * (n_rows // count)
    return ((offsets + spread) % n_rows).to(device)


def make_update_rows(batch: int, n_rows: int, device: str) -> torch.Tensor:
    """[B] distinct random bank rows (B ≤ N), the rows one update writes."""
    if batch > n_rows:
        raise ValueError(f"the update needs B <= N distinct rows, got B = {batch}, N = {n_rows}")
    generator = torch.Generator().manual_seed(SEED + 2)
    return torch.randperm(n_rows, generator=generator)[:batch].to(device)


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
    return lambda: mm_topk(queries, bank, case.shape.k, chunk)


def setup_reference(case: CaseSpec) -> Callable[[], Any]:
    queries, bank = case.inputs()
    return lambda: reference_bank_topk(queries, bank, case.shape.k)


def _faiss_gpu(faiss_module: Any, device: str) -> bool:
    gpus = faiss_module.get_num_gpus() if hasattr(faiss_module, "StandardGpuResources") else 0
    return device.startswith("cuda") and gpus > 0


def setup_faiss(case: CaseSpec) -> Callable[[], Any]:
    import faiss

    queries, bank = (t.float().cpu() for t in case.inputs())
    index = faiss.IndexFlatIP(case.shape.dim)
    index.add(bank.numpy())
    del bank
    if _faiss_gpu(faiss, case.device):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    query_array = queries.numpy()  # faiss takes and returns host arrays (a GPU index copies inside search)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        scores, ids = index.search(query_array, case.shape.k)
        return torch.from_numpy(scores), torch.from_numpy(ids)

    return run


def setup_triton_topk(case: CaseSpec) -> Callable[[], Any]:
    from reidscale.kernels.triton import triton_bank_topk

    queries, bank = case.inputs()
    return lambda: triton_bank_topk(queries, bank, case.shape.k)


def setup_cuda_topk(case: CaseSpec) -> Callable[[], Any]:
    from reidscale.kernels.cuda import cuda_bank_topk

    queries, bank = case.inputs()
    return lambda: cuda_bank_topk(queries, bank, case.shape.k)


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
    from reidscale.kernels.dispatch import backend_status
    from reidscale.kernels.support import BACKEND_SUPPORT

    usable, reason = backend_status(name)
    if not usable:
        return reason
    op = KERNEL_OPS[case.shape.op]
    limits = BACKEND_SUPPORT[name].ops.get(op)
    if limits is None:
        return f"the {name} backend has no {op} kernel"
    k = case.shape.k if case.shape.op == "topk" else None
    outside = limits.why_not(dtypes=(DTYPES[case.dtype],), k=k, dim=case.shape.dim, rows=case.n_rows)
    return None if outside is None else f"{outside}: outside what the {name} kernel serves (kernels.support)"


def why_not_backend(name: str, case: CaseSpec) -> str | None:
    """None if backend ``name`` of the case's op can run ``case`` here, else the reason."""
    return why_not_topk_backend(name, case) if case.shape.op == "topk" else _why_not_kernel(name, case)


# ------------------------------------------------------------------------------------------ loss cases


def dense_loss(queries: torch.Tensor, bank: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Dense reference: [B, N] logits, log_softmax, uniform weights over the P positives → scalar."""
    log_probs = torch.log_softmax(queries @ bank.T / TEMPERATURE, dim=1)  # [B, N]
    return -log_probs.gather(1, positives).mean(dim=1).mean()


def _loss_case(loss_fn: Callable[..., torch.Tensor], case: CaseSpec) -> Callable[[], Any]:
    queries, bank = case.inputs()
    positives = make_positives(case.shape.batch, case.n_rows, case.device)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        leaf = queries.clone().requires_grad_(True)
        loss = loss_fn(leaf, bank, positives)
        loss.backward()
        return loss.detach(), leaf.grad

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


# ------------------------------------------------------------------------------------------ bank update


def _triton_update(
    bank: torch.Tensor, indices: torch.Tensor, features: torch.Tensor, momentum: float
) -> None:
    from reidscale.kernels.triton import triton_bank_update

    triton_bank_update(bank, indices, features, momentum, True)


#: name → bank_update(bank, indices, features, momentum) in place; "reference" is the baseline.
UPDATE_FUNCTIONS: dict[str, Callable[..., None]] = {
    "reference": reference_bank_update,
    "triton": _triton_update,
}


def _update_case(backend: str, case: CaseSpec) -> Callable[[], Any]:
    features, bank = case.inputs()
    indices = make_update_rows(case.shape.batch, case.n_rows, case.device)
    update = UPDATE_FUNCTIONS[backend]
    return lambda: update(bank, indices, features, UPDATE_MOMENTUM)


def setup_update_reference(case: CaseSpec) -> Callable[[], Any]:
    return _update_case("reference", case)


def setup_update_triton(case: CaseSpec) -> Callable[[], Any]:
    return _update_case("triton", case)


#: bank_update backends, same contract as TOPK_BACKENDS (the timed call returns None); "reference" first.
UPDATE_BACKENDS: dict[str, Callable[[CaseSpec], Callable[[], Any]]] = {
    "reference": setup_update_reference,
    "triton": setup_update_triton,
}

#: op → its backends, the baseline first
BACKENDS_OF: dict[str, dict[str, Callable[[CaseSpec], Callable[[], Any]]]] = {
    "topk": TOPK_BACKENDS,
    "loss": LOSS_BACKENDS,
    "update": UPDATE_BACKENDS,
}


def update_agreement(case: CaseSpec, backend: str) -> dict[str, Any]:
    """One update by ``backend`` and one by the reference from the same bank: max |Δ| within the dtype's
    tolerance (:data:`UPDATE_TOLERANCE`)."""
    features, bank = case.inputs()
    indices = make_update_rows(case.shape.batch, case.n_rows, case.device)
    want = bank.clone()
    UPDATE_FUNCTIONS["reference"](want, indices, features, UPDATE_MOMENTUM)
    UPDATE_FUNCTIONS[backend](bank, indices, features, UPDATE_MOMENTUM)
    diff = float((bank.double() - want.double()).abs().max())
    tol = UPDATE_TOLERANCE[case.dtype]
    return {
        "bank_max_abs_diff": f"{diff:.3e}",
        "tolerance": f"{tol:.3e}",
        "agree": "yes" if diff <= tol else "NO",
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


def loss_agreement(base: tuple[Any, torch.Tensor], other: tuple[Any, torch.Tensor]) -> dict[str, Any]:
    """|loss difference| and max |grad difference| / max |grad| against the dense baseline; each side is
    (loss, dL/dq [B, D]), the loss a float or a 0-d tensor."""
    base, other = (float(base[0]), base[1].float()), (float(other[0]), other[1].float().to(base[1].device))
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
    if shape.op == "update":
        return 2 * bank + 4 * shape.batch * shape.dim * SCORE_BYTES  # bank + the agreement copy, rows
    sort_work = 4 * shape.batch * (shape.k + 8192) * 12
    return 2 * bank + budget_mb * 2**20 + sort_work


def shape_fields(name: str, shape: Shape, args: argparse.Namespace) -> dict[str, Any]:
    n_run = shape.n_run(args.scale)
    divisor = shape.n_issue / n_run
    return {
        "op": OP_NAMES[shape.op],
        "shape": name,
        "scale": args.scale,
        "batch": shape.batch,
        "dim": shape.dim,
        "n_issue": shape.n_issue,
        "n_run": n_run,
        "n_divisor": f"{divisor:g}",
        "reduced": f"yes (N = n_issue / {divisor:g})" if n_run != shape.n_issue else "no",
        "k": shape.k if shape.op == "topk" else "",
        "positives": min(NUM_POSITIVES, n_run) if shape.op == "loss" else "",
        "dtype": args.dtype,
        "device_arg": args.device,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": f"{os.getloadavg()[0]:.2f}",
    }


def chunk_rows(shape: Shape, backend: str, n_rows: int, budget_mb: int) -> str:
    from reidscale.kernels.reference_topk import DEFAULT_BANK_CHUNK

    if shape.op == "update":
        return ""
    if shape.op == "loss":
        return str(n_rows if backend == "dense" else min(LOSS_BANK_CHUNK, n_rows))
    if backend == "mm+topk":
        return str(mm_chunk_rows(shape.batch, n_rows, shape.k, budget_mb))
    return str(min(DEFAULT_BANK_CHUNK, n_rows)) if backend == "reference" else ""


def timing_fields(measured: Measurement, baseline: Measurement) -> dict[str, Any]:
    stats = measured.stats
    return {
        "repeats": len(measured.seconds),
        "seconds_median": f"{stats.median:.4g}",
        "seconds_min": f"{min(stats.seconds):.4g}",
        "seconds_max": f"{max(stats.seconds):.4g}",
        "seconds_iqr": f"{stats.iqr:.3g}",
        "warmup": measured.warmup,
        "first_call_s": "" if stats.first_call is None else f"{stats.first_call:.4g}",
        "timer": measured.timer,
        "peak_extra_mb": f"{measured.peak_bytes / 2**20:.1f}",
        "memory_method": measured.memory_method,
        "speedup_vs_baseline": f"{baseline.median_seconds / measured.median_seconds:.2f}",
        "mem_ratio_vs_baseline": f"{measured.peak_bytes / max(baseline.peak_bytes, 1):.3f}",
    }


def work(op: str, batch: int, dim: int, n_rows: int, dtype: str) -> tuple[int, int]:
    """(floating-point operations, fewest bytes moved) of one call of a shape ``op`` (module docstring)."""
    itemsize = DTYPES[dtype].itemsize
    if op == "update":
        return 6 * batch * dim, 3 * batch * dim * itemsize
    passes = 1 if op == "topk" else 2
    return 2 * passes * batch * n_rows * dim, passes * n_rows * dim * itemsize


def roofline_fields(row: dict[str, Any], roofline: Roofline) -> dict[str, Any]:
    """Roofline columns of a row (uses its shape, batch, dim, n_run, dtype and seconds_median)."""
    op = SHAPES[row["shape"]].op
    flops, bytes_moved = work(op, row["batch"], row["dim"], row["n_run"], row["dtype"])
    roof_seconds, bound = roofline.seconds(flops, bytes_moved)
    return {
        "flops": flops,
        "roofline_seconds": f"{roof_seconds:.4f}",
        "roofline_bound": bound,
        "pct_roofline": f"{100 * roof_seconds / float(row['seconds_median']):.1f}",
        "peak_gflops_assumed": f"{roofline.flops_per_s / 1e9:.1f}",
        "bandwidth_gbs_assumed": f"{roofline.bytes_per_s / 1e9:.1f}",
        "roofline_source": roofline.source,
    }


AGREEMENT_ORDER = (
    "idx_match_frac",
    "untied_mismatches",
    "max_score_diff",
    "loss_abs_diff",
    "grad_rel_diff",
    "bank_max_abs_diff",
    "tolerance",
    "agree",
)


def agreement(case: CaseSpec, backend: str, base: Any, other: Any) -> dict[str, Any]:
    """Every :data:`AGREEMENT_ORDER` column of ``backend``'s result against the baseline's (results on the
    host or on the case's device; top-k and loss compared on the device, the update re-run there)."""
    device = case.device
    if case.shape.op == "topk":
        queries, bank = case.inputs()
        base, other = [tuple(t.to(device) for t in result) for result in (base, other)]
        found = topk_agreement(queries, bank, base, other, case.dtype)
    elif case.shape.op == "loss":
        found = loss_agreement(base, other)
    else:
        found = update_agreement(case, backend)
    return {column: found.get(column, "") for column in AGREEMENT_ORDER}


def run_shape(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure every backend of one shape (each in a fresh process), check agreement; one row each."""
    shape = SHAPES[name]
    n_rows = shape.n_run(args.scale)
    need, free = needed_bytes(shape, n_rows, args.mm_budget_mb), free_bytes(args.device)
    if need > free:
        print(f"[{name}] SKIPPED: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free", flush=True)
        return []
    case = CaseSpec(shape, n_rows, args.device, args.mm_budget_mb, args.dtype)
    backends = BACKENDS_OF[shape.op]
    cuda = args.device.startswith("cuda")
    measured: dict[str, Measurement] = {}
    for backend, setup in backends.items():
        reason = why_not_backend(backend, case)
        if reason is not None:
            print(f"[{name}] {backend}: not run ({reason})", flush=True)
            continue
        print(f"[{name}] {backend}: N={n_rows}, {args.warmup} warm-up + {args.repeats} timed ...", flush=True)
        measured[backend] = measure_isolated(setup, (case,), args.repeats, cuda, args.warmup)
    base_name = next(iter(backends))
    if base_name not in measured:
        print(f"[{name}] the baseline {base_name} did not run: no rows", flush=True)
        return []
    rows = []
    for backend, result in measured.items():
        rows.append(
            {
                **shape_fields(name, shape, args),
                "backend": backend,
                "baseline": base_name,
                "chunk_rows": chunk_rows(shape, backend, n_rows, args.mm_budget_mb),
                **timing_fields(result, measured[base_name]),
                **agreement(case, backend, measured[base_name].result, result.result),
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
    "seconds_iqr",
    "first_call_s",
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
    "bank_max_abs_diff",
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
    parser.add_argument(
        "--repeats",
        type=int,
        default=MIN_REPEATS,
        help=f"timed runs per case (>= {MIN_REPEATS}; median, IQR)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed calls first (the first reported apart)"
    )
    parser.add_argument("--mm-budget-mb", type=int, default=1024, help="mm+topk: B x chunk score budget")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="queries and bank dtype")
    parser.add_argument("--output", default=str(results_path("kernels")), help="CSV file to append rows to")
    args = parser.parse_args(argv)
    shapes = choice_list(parser, "--shapes", args.shapes, list(SHAPES))
    if args.repeats < MIN_REPEATS:
        parser.error(f"--repeats must be >= {MIN_REPEATS} (a median and a spread need several runs)")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.mm_budget_mb < 1:
        parser.error("--mm-budget-mb must be >= 1")
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
