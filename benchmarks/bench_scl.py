"""Benchmark: selective contrastive learning (docs/methods.md), the selection and the whole training step,
the fused and sharded path of this repository against the original approach.

Paths (``path`` column):

* ``original``: what the released code does. The banks stay where they are (CPU-resident in the original;
  here on ``--device``), the full selection distance matrix
  ``D = λ_g‖g − G‖² + (1−λ_g)·mean_k‖l_k − L_k‖² + λ_c·[same camera]`` is materialised as [B, N] (matmuls
  on the banks, ``‖a‖² + ‖b‖² − 2a·b``; an fp16/bf16 bank is cast to fp32 in row blocks of
  ``ORIGINAL_CHUNK`` on the way into the matmuls, the [B, N] matrix is still whole), self gets +inf, and
  all N are sorted per anchor (``argsort``, stable); the first k are taken.
* ``fused``: :meth:`SelectiveBanks.select` on one rank (``bank_topk``: one weighted inner product with a
  running top-k; the B×N matrix is never formed). The ``topk_backend`` column says which backend
  ``reidscale.kernels.dispatch`` chose (on a CPU machine: the torch reference).
* ``*_sharded``: the same with 2 ranks, each owning half of the bank rows (gloo on CPU; NCCL with one GPU
  per rank with ``--device cuda``; with fewer than 2 GPUs the case is a ``skipped: 1 GPU`` status row).

Ops (``op`` column):

1. ``select``: B anchors (the global batch; with 2 ranks each rank selects for B/2 of them), k = P + N_neg
   = 507. Cases: original (1 rank), fused (1 rank), fused_sharded (2 ranks). Before any row is written the
   selections of fused and fused_sharded are checked against original's: the top-P sets (positives) and
   the top-k sets (candidates) per anchor must be equal except for near-ties, i.e. rows whose score lies
   within ``tolerance`` (``bench_kernels.score_tolerance(Dg + S·Dl)``) of the other path's boundary score;
   scores of the rows both chose must agree within the same tolerance (``agree`` column).
2. ``train_step``: ``SelectiveContrastive.forward`` + backward + SGD (the original's: lr 1e-3, momentum
   0.9, Nesterov, wd 5e-4) with a real backbone at 256×128 (CPU default: resnet18, B = 8 global; GPU:
   resnet50, B = 32), past the warm-up epochs (selection on). ``original`` plugs the original selection into
   the same step by replacing ``bank_topk`` inside ``reidscale.objectives.selective.banks`` (this process
   only); with 2 ranks every rank runs it on its own shard and the usual merge follows. 2-rank steps wrap
   the objective in ``DistributedDataParallel``. ``select_s_median`` is the time spent inside
   ``SelectiveBanks.select`` during the step. Both paths start from the same weights, banks and batches, so
   their losses must agree (``loss_diff_vs_original``, same world size).

Synthetic banks (nothing is downloaded): rows are generated in blocks of ``GEN_BLOCK``: a pool of random
unit rows (per feature block: G and each L_k), and for each block a random cyclic shift of every feature
block's columns and random signs (norm-preserving, cheap at N = 1M; a rank generates only its own rows).
The B anchors are fresh random unit features at distinct random rows whose bank row is overwritten with a
noisy copy of the anchor (so self, excluded, would otherwise be the best row). Cameras: uniform in 0..5.
Mixture bank (training step): a copy of G.

Memory: CUDA: ``max_memory_allocated`` minus the allocation at the start of the timed loop. CPU: each case
runs in fresh spawned process(es): VmHWM after a ``clear_refs`` reset minus VmRSS at the start of the timed
loop (``benchmarks/common.py``), i.e. the extra memory of the timed work, the bank excluded
(``bank_mb_per_rank`` is the bank itself). With 2 ranks: the larger rank's figure.

Bank dtype ``auto``: float32 when the banks fit in 40 % of the free memory, else float16 (the row says
which; at N = 1M, 4096 selection columns are 16 GB in fp32, 8 GB in fp16).

Threads: ``--threads`` (default: all cores) is split over the ranks, so 1 rank runs 2 torch threads and 2
ranks 1 each on a 2-core machine. On a shared, loaded 2-core box 2 intra-op threads can be several times
slower than 1 (measured: fused select at N = 12,936, 0.14 s with 1 thread, 1.2 s with 2, load avg 3.5); the
rows carry ``threads_per_rank`` and ``load_avg_1m``; ``--threads 1`` gives every process one thread.

    python benchmarks/bench_scl.py                  # CPU: N = 12,936 and 1M; 8 minutes measured (load avg ~4)
    python benchmarks/bench_scl.py --sizes 12936 --threads 1
    python benchmarks/bench_scl.py --device cuda --train-sizes 12936,1000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # repo root: `benchmarks` and `reidscale` import when run as a script
from benchmarks.bench_kernels import free_bytes, score_tolerance  # noqa: E402
from benchmarks.bench_train import last_error  # noqa: E402
from benchmarks.common import (  # noqa: E402
    _cpu_peak,
    _start_cpu_peak,
    append_rows,
    provenance,
    results_path,
    run_timed,
)
from reidscale.objectives.selective import banks as banks_module  # noqa: E402
from reidscale.objectives.selective.banks import Anchors, SelectiveBanks  # noqa: E402
from reidscale.objectives.selective.config import SelectiveConfig  # noqa: E402
from reidscale.utils.io import atomic_write  # noqa: E402
from reidscale.utils.ports import free_port  # noqa: E402

SEED = 0
MARKET_ROWS = 12_936  # Market-1501 training images (the "13k" bank of the benchmark shapes)
NUM_CAMERAS = 6
LARGE_N = 100_000  # above this many rows the select cases default to 2 timed calls
GEN_BLOCK = 16_384  # rows per generated block of the synthetic bank
ORIGINAL_CHUNK = 16_384  # bank rows cast to fp32 at a time by the original path (fp16/bf16 banks only)
ANCHOR_NOISE = 0.5
SGD = {"lr": 1e-3, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}  # the original's optimiser
PATHS = ("original", "fused")
BANK_DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Spec:
    """One measured case; travels to the rank processes (picklable)."""

    op: str  # "select" or "train_step"
    path: str  # "original" or "fused"
    n_rows: int
    batch: int  # global: anchors (select) or images (train_step) over all ranks
    bank_dtype: str
    device: str  # "cpu" or "cuda"
    world_size: int
    threads: int  # per rank
    warmup: int
    repeats: int
    model: str = "resnet18"
    height: int = 256
    width: int = 128
    scl: dict[str, Any] = field(default_factory=dict)  # SelectiveConfig overrides (tests: small dims)
    seed: int = SEED

    @property
    def name(self) -> str:
        return self.path + ("_sharded" if self.world_size > 1 else "")

    def config(self) -> SelectiveConfig:
        return SelectiveConfig(**{**self.scl, "bank_dtype": self.bank_dtype})


# ------------------------------------------------------------------------------------ synthetic banks
def feature_blocks(config: SelectiveConfig) -> list[tuple[int, int]]:
    """(start, width) of G and of each L_k inside a selection row [Dg + S·Dl]."""
    blocks = [(0, config.global_dim)]
    blocks += [
        (config.global_dim + s * config.local_dim, config.local_dim) for s in range(config.num_stripes)
    ]
    return blocks


def normalise_blocks(rows: Tensor, config: SelectiveConfig) -> Tensor:
    """[R, Dg + S·Dl] → the same with G and every L_k block L2-normalised (float32)."""
    return torch.cat([F.normalize(rows[:, a : a + w].float(), dim=1) for a, w in feature_blocks(config)], 1)


def _pool(config: SelectiveConfig, seed: int) -> Tensor:
    """[GEN_BLOCK, Dg + S·Dl] float32 random rows, unit per feature block (the same in every process)."""
    width = config.global_dim + config.num_stripes * config.local_dim
    generator = torch.Generator().manual_seed(seed)
    return normalise_blocks(torch.randn(GEN_BLOCK, width, generator=generator), config)


def generated_block(pool: Tensor, block: int, config: SelectiveConfig, seed: int) -> Tensor:
    """Rows ``[block·GEN_BLOCK, (block+1)·GEN_BLOCK)``: ``pool`` with every feature block's columns cyclically
    shifted and sign-flipped by a draw seeded by (seed, block) → [GEN_BLOCK, D] float32."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * (block + 1))
    signs = torch.randint(0, 2, (pool.shape[1],), generator=generator).float() * 2 - 1
    parts = []
    for start, width in feature_blocks(config):
        shift = int(torch.randint(0, width, (1,), generator=generator))
        parts.append(torch.roll(pool[:, start : start + width], shift, dims=1))
    return torch.cat(parts, dim=1).mul_(signs)


def fill_rows(target: Tensor, start: int, config: SelectiveConfig, seed: int) -> None:
    """Fill ``target`` [n, D] (any dtype/device) with the generated global rows ``start .. start + n``."""
    pool = _pool(config, seed)
    stop = start + target.shape[0]
    for block in range(start // GEN_BLOCK, (stop - 1) // GEN_BLOCK + 1):
        lo, hi = max(start, block * GEN_BLOCK), min(stop, (block + 1) * GEN_BLOCK)
        rows = generated_block(pool, block, config, seed)[lo - block * GEN_BLOCK : hi - block * GEN_BLOCK]
        target[lo - start : hi - start] = rows.to(target.dtype)


def make_cameras(n_rows: int, seed: int) -> Tensor:
    """[N] int64 cameras, uniform in 0..NUM_CAMERAS−1."""
    return torch.randint(0, NUM_CAMERAS, (n_rows,), generator=torch.Generator().manual_seed(seed + 1))


def make_anchors(n_rows: int, batch: int, config: SelectiveConfig, seed: int, step: int = 0) -> Anchors:
    """The global batch of ``batch`` anchors at distinct rows (the same in every process): [B] index and
    cameras, [B, Dg] g, [B, S, Dl] stripes."""
    if not 1 <= batch <= n_rows:
        raise ValueError(f"batch must lie in [1, n_rows={n_rows}], got {batch}")
    generator = torch.Generator().manual_seed(seed + 2 + 1_009 * step)
    index = torch.randperm(n_rows, generator=generator)[:batch]
    width = config.global_dim + config.num_stripes * config.local_dim
    features = normalise_blocks(torch.randn(batch, width, generator=generator), config)
    stripes = features[:, config.global_dim :].reshape(batch, config.num_stripes, config.local_dim)
    cameras = make_cameras(n_rows, seed)[index]
    return Anchors(index=index, cameras=cameras, g=features[:, : config.global_dim], stripes=stripes)


def plant_anchor_rows(banks: SelectiveBanks, anchors: Anchors, seed: int) -> None:
    """Overwrite the owned bank rows of the anchors with noisy copies of their features."""
    generator = torch.Generator().manual_seed(seed + 3)
    features = torch.cat([anchors.g, anchors.stripes.flatten(1)], dim=1)
    noise = normalise_blocks(torch.randn(features.shape, generator=generator), banks.config)
    noisy = normalise_blocks(features + ANCHOR_NOISE * noise, banks.config)
    own = banks.shards.owned(anchors.index)
    local = (anchors.index[own] - banks.shards.start).to(banks.selection.device)
    banks.selection[local] = noisy[own].to(banks.selection.device, banks.selection.dtype)


def build_selection_banks(spec: Spec, device: torch.device, rank: int) -> SelectiveBanks:
    """This rank's shard of generated banks for the selection alone: the selection bank filled, the mixture
    bank (unused by ``select``) dropped to [n, 0] (it would be 4 GB of fp16 at N = 1M)."""
    config = spec.config()
    banks = SelectiveBanks(
        spec.n_rows, make_cameras(spec.n_rows, spec.seed), config, device, rank, spec.world_size
    )
    banks.mixture = banks.mixture[:, :0].clone()
    fill_selection_and_mixture(banks, spec.seed)
    return banks


def fill_selection_and_mixture(banks: SelectiveBanks, seed: int) -> None:
    """Generated rows into this shard's selection bank; the mixture bank gets a copy of G."""
    fill_rows(banks.selection, banks.shards.start, banks.config, seed)
    if banks.mixture.shape[1]:
        banks.mixture.copy_(banks.global_bank())
    banks.initialised.fill_(True)


# ------------------------------------------------------------------------------------ the original path
def original_distances(
    queries: Tensor, banks: list[tuple[Tensor, float]], cam_term: tuple[Tensor, Tensor, float] | None
) -> Tensor:
    """The released code's selection distance, materialised: [B, N] float32.

    ``D[b, n] = Σ_i w_i·(‖q_ib‖² + ‖m_in‖² − 2·q_ib·m_in) + λ_c·[cam_b == cam_n]`` where ``q_i`` is the i-th
    column block of ``queries`` [B, Σ D_i] and ``(m_i [N, D_i], w_i)`` the i-th bank; ``cam_term`` =
    (query_cams [B], bank_cams [N], λ_c). Weights (λ_g, (1−λ_g)/S, …) give
    λ_g‖g−G‖² + (1−λ_g)·mean_k‖l_k−L_k‖².
    """
    n_rows = banks[0][0].shape[0]
    dist = torch.zeros(queries.shape[0], n_rows, dtype=torch.float32, device=queries.device)
    offset = 0
    for rows, weight in banks:
        q = queries[:, offset : offset + rows.shape[1]].float()
        offset += rows.shape[1]
        step = n_rows if rows.dtype == torch.float32 else ORIGINAL_CHUNK
        for start in range(0, n_rows, step):
            m = rows[start : start + step].float()
            block = (q * q).sum(1, keepdim=True) + (m * m).sum(1)[None, :] - 2.0 * (q @ m.T)
            dist[:, start : start + step].add_(block, alpha=weight)
    if cam_term is not None:
        query_cams, bank_cams, penalty = cam_term
        dist.add_((query_cams[:, None] == bank_cams[None, :]).float(), alpha=penalty)
    return dist


def original_topk(
    queries: Tensor,
    banks: list[tuple[Tensor, float]],
    k: int,
    *,
    self_index: Tensor | None = None,
    query_cams: Tensor | None = None,
    bank_cams: Tensor | None = None,
    cam_penalty: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """The original selection with ``bank_topk``'s call signature (as ``SelectiveBanks.select`` calls it).

    Full [B, N] distance (:func:`original_distances`, camera penalty λ_c = 2·``cam_penalty``: the score
    penalty is half the distance penalty), self (``self_index`` [B], −1 = none) set to +inf, a full stable
    argsort over N, the first k. Returns ``(scores [B, k], indices [B, k])`` with score = 1 − D/2 (= the
    fused score for unit rows), padded with (−inf, −1) past the N − 1 rows that exist.
    """
    cams = None if query_cams is None else (query_cams, bank_cams, 2.0 * cam_penalty)
    dist = original_distances(queries, list(banks), cams)
    if self_index is not None:
        rows = torch.nonzero(self_index >= 0).flatten()
        dist[rows, self_index[rows]] = float("inf")
    order = torch.argsort(dist, dim=1, stable=True)[:, :k]
    best = dist.gather(1, order)
    valid = torch.isfinite(best)
    scores = torch.where(valid, 1.0 - best / 2, float("-inf"))
    ids = torch.where(valid, order, -1)
    missing = k - ids.shape[1]
    if missing > 0:
        scores = F.pad(scores, (0, missing), value=float("-inf"))
        ids = F.pad(ids, (0, missing), value=-1)
    return scores, ids


# ------------------------------------------------------------------------------------------ agreement
def _row_mismatches(base: tuple[Tensor, Tensor], other: tuple[Tensor, Tensor], upto: int, tol: float):
    """(set mismatches, untied mismatches, max |score diff| of common rows) of one anchor's first ``upto``."""
    base_ids, other_ids = base[1][:upto].tolist(), other[1][:upto].tolist()
    base_score = dict(zip(base_ids, base[0][:upto].tolist(), strict=True))
    other_score = dict(zip(other_ids, other[0][:upto].tolist(), strict=True))
    only_base, only_other = set(base_ids) - set(other_ids), set(other_ids) - set(base_ids)
    untied = 0
    for missing, own, boundary in (
        (only_base, base_score, other[0][upto - 1]),
        (only_other, other_score, base[0][upto - 1]),
    ):
        for row in missing:
            near = row >= 0 and abs(own[row] - float(boundary)) <= tol
            untied += 0 if near else 1
    common = [r for r in set(base_ids) & set(other_ids) if r >= 0]
    diff = max((abs(base_score[r] - other_score[r]) for r in common), default=0.0)
    return len(only_base) + len(only_other), untied, diff


def selection_agreement(
    base: tuple[Tensor, Tensor], other: tuple[Tensor, Tensor], num_positives: int, tol: float
) -> dict[str, Any]:
    """Compare two selections ``(scores [B, k], ids [B, k])`` anchor by anchor: the top-P sets and the top-k
    sets must match except for near-ties (a row only one side chose, with a score within ``tol`` of the other
    side's boundary score); common rows' scores must agree within ``tol``."""
    if base[1].shape != other[1].shape:
        raise ValueError(f"other must have shape {tuple(base[1].shape)}, got {tuple(other[1].shape)}")
    k = base[1].shape[1]
    totals = {"set": 0, "untied": 0, "diff": 0.0}
    for b in range(base[1].shape[0]):
        for upto in sorted({min(num_positives, k), k} - {0}):
            sets, untied, diff = _row_mismatches(
                (base[0][b], base[1][b]), (other[0][b], other[1][b]), upto, tol
            )
            totals["set"] += sets
            totals["untied"] += untied
            totals["diff"] = max(totals["diff"], diff)
    same_position = float((base[1] == other[1]).float().mean())
    ok = totals["untied"] == 0 and totals["diff"] <= tol
    return {
        "idx_match_frac": f"{same_position:.6f}",
        "set_mismatches": totals["set"],
        "untied_mismatches": totals["untied"],
        "max_score_diff": f"{totals['diff']:.3e}",
        "tolerance": f"{tol:.3e}",
        "agree": "yes" if ok else "NO",
    }


# ----------------------------------------------------------------------------------- rank processes
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _barrier(world_size: int) -> None:
    if world_size > 1:
        torch.distributed.barrier()


def _peak_start(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device), "cuda: max_memory_allocated - allocated at loop start"
    return _start_cpu_peak()


def _peak_end(device: torch.device, baseline: int, method: str) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) - baseline
    return _cpu_peak(baseline, method)


def timed_loop(run: Callable[[int], Any], spec: Spec, device: torch.device) -> dict[str, Any]:
    """Call ``run(step)`` for warm-up + timed steps; seconds of the timed ones (the slowest rank's), the last
    result, peak extra memory over the whole loop."""
    baseline, method = _peak_start(device)
    seconds, result = [], None
    for step in range(spec.warmup + spec.repeats):
        _barrier(spec.world_size)
        start = time.perf_counter()
        result = run(step)
        _sync(device)
        if step >= spec.warmup:
            seconds.append(time.perf_counter() - start)
    peak = _peak_end(device, baseline, method)
    if spec.world_size > 1:
        slowest = torch.tensor([*seconds, float(peak)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
        seconds, peak = slowest[:-1].tolist(), int(slowest[-1])
    return {"seconds": seconds, "result": result, "peak_bytes": peak, "memory_method": method}


def select_case(spec: Spec, device: torch.device, rank: int) -> dict[str, Any]:
    """Selection only: original (full distance + sort) or SelectiveBanks.select; this rank's selection."""
    banks = build_selection_banks(spec, device, rank)
    config = spec.config()
    anchors = make_anchors(spec.n_rows, spec.batch, config, spec.seed)
    plant_anchor_rows(banks, anchors, spec.seed)
    anchors = Anchors(*(t.to(device) for t in (anchors.index, anchors.cameras, anchors.g, anchors.stripes)))
    k = config.selection_k
    if spec.path == "original":
        if spec.world_size != 1:
            raise ValueError("the original selection runs on one rank (world_size 1)")
        queries = torch.cat([anchors.g, anchors.stripes.flatten(1)], dim=1)
        options = {"self_index": anchors.index, "query_cams": anchors.cameras, "bank_cams": banks.cameras}

        def run(step: int) -> tuple[Tensor, Tensor]:
            return original_topk(
                queries, banks.weighted_banks(), k, cam_penalty=config.cam_penalty / 2, **options
            )
    else:

        def run(step: int) -> tuple[Tensor, Tensor]:
            return banks.select(anchors, k)

    measured = timed_loop(run, spec, device)
    measured["result"] = tuple(t.cpu() for t in measured["result"])
    return {**measured, "bank_bytes": _bank_bytes(banks, with_mixture=False)}


def _bank_bytes(banks: SelectiveBanks, with_mixture: bool) -> int:
    tensors = [banks.selection, banks.mixture] if with_mixture else [banks.selection]
    return sum(t.numel() * t.element_size() for t in tensors)


def train_batches(spec: Spec, rank: int, device: torch.device) -> list[dict[str, Tensor]]:
    """One batch per step for this rank: its B/W anchors of the step's global draw, random images."""
    config, per_rank = spec.config(), spec.batch // spec.world_size
    batches = []
    for step in range(spec.warmup + spec.repeats):
        anchors = make_anchors(spec.n_rows, spec.batch, config, spec.seed, step)
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        generator = torch.Generator().manual_seed(spec.seed + 5 + 1_009 * step + rank)
        images = torch.randn(per_rank, 3, spec.height, spec.width, generator=generator)
        batch = {"image": images, "index": anchors.index[mine], "camid": anchors.cameras[mine]}
        batches.append({key: value.to(device) for key, value in batch.items()})
    return batches


def build_objective(spec: Spec, device: torch.device, rank: int) -> Any:
    """SelectiveContrastive over ``spec.model`` (seeded weights), generated banks, past the warm-up."""
    from reidscale.models import create_backbone
    from reidscale.objectives.selective.objective import SelectiveContrastive

    config = spec.config()
    torch.manual_seed(spec.seed)
    backbone = create_backbone(spec.model, img_size=(spec.height, spec.width))
    objective = SelectiveContrastive(backbone, config, make_cameras(spec.n_rows, spec.seed)).to(device)
    fill_selection_and_mixture(objective.attach_banks(device, rank, spec.world_size), spec.seed)
    objective.set_steps_per_epoch(1)
    objective.before_step(config.warmup_epochs, {})  # first epoch with selection
    if objective.in_warmup:
        raise ValueError("the benchmarked step must be past the warm-up epochs")
    return objective


def train_case(spec: Spec, device: torch.device, rank: int) -> dict[str, Any]:
    """forward + backward + SGD step; the time inside SelectiveBanks.select is recorded per step."""
    if spec.path == "original":
        banks_module.bank_topk = original_topk  # this rank process only
    objective = build_objective(spec, device, rank)
    banks = objective.banks
    select_seconds: list[float] = []
    fused_select = banks.select

    def timed_select(anchors: Anchors, k: int) -> tuple[Tensor, Tensor]:
        start = time.perf_counter()
        out = fused_select(anchors, k)
        _sync(device)
        select_seconds.append(time.perf_counter() - start)
        return out

    banks.select = timed_select
    model = objective
    if spec.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids)
    optimizer = torch.optim.SGD(objective.parameters(), **SGD)
    batches, losses = train_batches(spec, rank, device), []

    def run(step: int) -> None:
        out = model(batches[step])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))

    measured = timed_loop(run, spec, device)
    return {
        **measured,
        "result": losses,
        "select_seconds": select_seconds[spec.warmup :],
        "bank_bytes": _bank_bytes(banks, with_mixture=True),
    }


CASES: dict[str, Callable[[Spec, torch.device, int], dict[str, Any]]] = {
    "select": select_case,
    "train_step": train_case,
}


def rank_main(rank: int, spec: Spec, port: int, out_dir: str) -> None:
    """Entry point of one rank process: set up the group, run the case, save this rank's result."""
    torch.set_num_threads(spec.threads)
    device = torch.device("cuda", rank) if spec.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if spec.world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=spec.world_size
        )
    try:
        result = CASES[spec.op](spec, device, rank)
        atomic_write(Path(out_dir) / f"rank{rank}.pt", lambda tmp: torch.save(result, tmp))
        _barrier(spec.world_size)  # only on success: a failed rank must not leave the others waiting
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------------------- launch
def launch(spec: Spec, timeout_s: float) -> list[dict[str, Any]] | str:
    """Run ``spec`` in ``world_size`` fresh spawned processes: every rank's result, or why it failed."""
    with tempfile.TemporaryDirectory(prefix="bench_scl_") as tmp:
        context = torch.multiprocessing.start_processes(
            rank_main, args=(spec, free_port(), tmp), nprocs=spec.world_size, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + timeout_s
        try:
            while not context.join(timeout=5.0):
                if time.monotonic() > deadline:
                    for process in context.processes:
                        process.kill()
                    return f"timed out after {timeout_s:.0f} s"
        except Exception as err:  # a rank raised or died: torch's ProcessRaised/ExitedException
            return last_error(str(err))
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(spec.world_size)]


def why_not_world(spec: Spec) -> str | None:
    """None when ``spec``'s world size can run here, else the status ("skipped: 1 GPU")."""
    if spec.world_size == 1 or spec.device != "cuda":
        return None
    gpus = torch.cuda.device_count()
    return None if gpus >= spec.world_size else f"skipped: {gpus} GPU"


# --------------------------------------------------------------------------------------------- rows
ROW_COLUMNS: tuple[str, ...] = (
    "op", "n_rows", "path", "case", "world_size", "dist_backend", "threads_per_rank", "device_arg",
    "topk_backend", "bank_dtype", "bank_mb_per_rank", "batch", "k", "model", "image_size", "warmup",
    "repeats", "seconds_median", "seconds_min", "select_s_median", "baseline", "speedup_vs_baseline",
    "peak_extra_mb", "mem_ratio_vs_baseline", "memory_method", "idx_match_frac", "set_mismatches",
    "untied_mismatches", "max_score_diff", "tolerance", "loss_step0", "loss_diff_vs_original", "agree",
    "load_avg_1m", "status", "note",
)  # fmt: skip


def topk_backend(spec: Spec) -> str:
    """What selects rows in this case: the original's matmul + sort, or the dispatched bank_topk backend."""
    if spec.path == "original":
        return "original: [B, N] distance via torch matmuls + full argsort"
    from reidscale.kernels.dispatch import choose_backend
    from reidscale.kernels.support import TRITON_TOPK_MAX_K

    k = spec.config().selection_k
    unsupported = {"triton": f"k = {k} > {TRITON_TOPK_MAX_K}"} if k > TRITON_TOPK_MAX_K else {}
    name = choose_backend("bank_topk", torch.device(spec.device), unsupported)
    return f"bank_topk: {name}" + (" reference (no GPU kernels on CPU tensors)" if name == "torch" else "")


def case_note(spec: Spec) -> str:
    notes = []
    if spec.path == "original":
        notes.append(f"banks on {spec.device} (the released code keeps them on the CPU)")
        if spec.bank_dtype != "float32":
            notes.append(
                f"{spec.bank_dtype} bank cast to fp32 {ORIGINAL_CHUNK} rows at a time into the matmuls"
            )
        if spec.world_size > 1:
            notes.append("original selection on each rank's shard + the usual merge")
    if spec.op == "train_step" and spec.device == "cpu":
        notes.append(
            f"CPU: {spec.model} at {spec.height}x{spec.width} global batch {spec.batch} (GPU: resnet50)"
        )
    if spec.world_size > 1 and spec.op == "train_step":
        notes.append("DistributedDataParallel")
    return "; ".join(notes)


def base_row(spec: Spec, status: str) -> dict[str, Any]:
    """Every column, the case description filled, the figures empty."""
    row = dict.fromkeys(ROW_COLUMNS, "")
    dist_backend = "none" if spec.world_size == 1 else ("nccl" if spec.device == "cuda" else "gloo")
    row.update(
        op=spec.op, n_rows=spec.n_rows, path=spec.path, case=spec.name, world_size=spec.world_size,
        dist_backend=dist_backend, threads_per_rank=spec.threads, device_arg=spec.device,
        topk_backend=topk_backend(spec), bank_dtype=spec.bank_dtype, batch=spec.batch,
        k=spec.config().selection_k, warmup=spec.warmup, repeats=spec.repeats,
        load_avg_1m=f"{os.getloadavg()[0]:.2f}", status=status, note=case_note(spec),
    )  # fmt: skip
    if spec.op == "train_step":
        row.update(model=spec.model, image_size=f"{spec.height}x{spec.width}")
    return row


def figures(ranks: list[dict[str, Any]], baseline: list[dict[str, Any]] | None, name: str) -> dict[str, Any]:
    """Timing and memory columns of a finished case (ratios against ``baseline``, same run)."""
    first = ranks[0]
    median = statistics.median(first["seconds"])
    row = {
        "seconds_median": f"{median:.4f}",
        "seconds_min": f"{min(first['seconds']):.4f}",
        "bank_mb_per_rank": f"{max(r['bank_bytes'] for r in ranks) / 2**20:.2f}",
        "peak_extra_mb": f"{first['peak_bytes'] / 2**20:.1f}",
        "memory_method": first["memory_method"] + ("; max over ranks" if len(ranks) > 1 else ""),
    }
    if "select_seconds" in first:
        row["select_s_median"] = f"{statistics.median(first['select_seconds']):.4f}"
    if baseline is not None:
        base_median = statistics.median(baseline[0]["seconds"])
        row["baseline"] = name
        row["speedup_vs_baseline"] = f"{base_median / median:.2f}"
        row["mem_ratio_vs_baseline"] = f"{first['peak_bytes'] / max(baseline[0]['peak_bytes'], 1):.3f}"
    return row


def merged_selection(ranks: list[dict[str, Any]]) -> tuple[Tensor, Tensor]:
    """Every rank's (scores, ids) for its anchors, concatenated in rank order → the global batch's."""
    return torch.cat([r["result"][0] for r in ranks]), torch.cat([r["result"][1] for r in ranks])


def loss_columns(ranks: list[dict[str, Any]], original: list[dict[str, Any]] | None) -> dict[str, Any]:
    losses = ranks[0]["result"]
    row = {"loss_step0": f"{losses[0]:.6f}"}
    if original is not None:
        diffs = [abs(a - b) for a, b in zip(losses, original[0]["result"], strict=True)]
        row["loss_diff_vs_original"] = f"{max(diffs):.2e}"
        row["agree"] = "yes" if diffs[0] <= 1e-4 * max(1.0, abs(losses[0])) else "NO"
    return row


# ---------------------------------------------------------------------------------------------- runs
def resolve_dtype(requested: str, n_rows: int, device: str, config: SelectiveConfig, mixture: bool) -> str:
    """``auto`` → float32 when the N-row banks (selection, + mixture) fit 40 % of the free memory in fp32,
    else float16."""
    if requested != "auto":
        return requested
    columns = config.global_dim * (2 if mixture else 1) + config.num_stripes * config.local_dim
    device = "cuda:0" if device == "cuda" else "cpu"
    return "float32" if n_rows * columns * 4 <= 0.4 * free_bytes(device) else "float16"


def why_not_memory(spec: Spec, with_mixture: bool) -> str | None:
    """A skip status when all ranks' banks (one machine on CPU) would not fit in 85 % of the free memory."""
    config = spec.config()
    columns = config.global_dim * (2 if with_mixture else 1) + config.num_stripes * config.local_dim
    need = spec.n_rows * columns * getattr(torch, spec.bank_dtype).itemsize
    free = free_bytes("cuda:0" if spec.device == "cuda" else "cpu")
    if need > 0.85 * free:
        return f"skipped: banks need {need / 2**30:.1f} GiB; {free / 2**30:.1f} GiB free"
    return None


def run_specs(specs: list[Spec], baseline_of: Callable[[Spec], str], check: Callable, timeout_s: float):
    """Launch each spec (baselines first); one row per spec. ``check(row, ranks, base_ranks, spec)`` adds the
    agreement columns of a non-baseline case."""
    rows, done = [], {}
    for spec in specs:
        status = why_not_world(spec) or why_not_memory(spec, spec.op == "train_step")
        if status is None:
            print(f"[{spec.op} N={spec.n_rows}] {spec.name} ({spec.bank_dtype}) ...", flush=True)
            ranks = launch(spec, timeout_s)
            status = "ok" if not isinstance(ranks, str) else f"FAILED {ranks}"
        row = base_row(spec, status)
        if status == "ok":
            done[spec.name] = ranks
            base = done.get(baseline_of(spec))
            row.update(figures(ranks, base, baseline_of(spec)))
            check(row, ranks, base, spec)
        print(f"    {row['status']}  {row['seconds_median']} s  agree={row['agree']}", flush=True)
        rows.append(row)
    return rows


def check_selection(row: dict, ranks: list, base: list | None, spec: Spec) -> None:
    if spec.path == "original" and spec.world_size == 1:
        row["agree"] = "baseline"
        return
    if base is None:
        row["agree"] = "n/a (original failed)"
        return
    config = spec.config()
    tol = score_tolerance(config.global_dim + config.num_stripes * config.local_dim)
    row.update(
        selection_agreement(merged_selection(base), merged_selection(ranks), config.num_positives, tol)
    )
    if row["agree"] != "yes":
        row["status"] = "FAILED the selection differs from the original's"


def check_losses(row: dict, ranks: list, base: list | None, spec: Spec) -> None:
    row.update(loss_columns(ranks, None if spec.path == "original" else base))
    if spec.path == "original":
        row["agree"] = "baseline"
    elif row["agree"] == "NO":
        row["status"] = "FAILED the step-0 loss differs from the original's"


def select_specs(n_rows: int, args: argparse.Namespace) -> list[Spec]:
    dtype = resolve_dtype(args.bank_dtype, n_rows, args.device, SelectiveConfig(**args.scl), False)
    common = {
        "op": "select",
        "n_rows": n_rows,
        "batch": args.batch,
        "bank_dtype": dtype,
        "device": args.device,
        "warmup": args.warmup,
        "repeats": args.repeats or (5 if n_rows <= LARGE_N else 2),
        "scl": args.scl,
    }
    one = Spec(path="original", world_size=1, threads=args.threads, **common)
    return [
        one,
        replace(one, path="fused"),
        replace(one, path="fused", world_size=2, threads=max(1, args.threads // 2)),
    ]


def train_specs(n_rows: int, args: argparse.Namespace) -> list[Spec]:
    dtype = resolve_dtype(args.bank_dtype, n_rows, args.device, SelectiveConfig(**args.scl), True)
    common = {
        "op": "train_step",
        "n_rows": n_rows,
        "batch": args.train_batch,
        "bank_dtype": dtype,
        "device": args.device,
        "warmup": args.train_warmup,
        "repeats": args.train_steps,
        "model": args.model,
        "height": args.height,
        "width": args.width,
        "scl": args.scl,
    }
    specs = []
    for world in (1, 2):
        threads = max(1, args.threads // world)
        specs += [Spec(path=path, world_size=world, threads=threads, **common) for path in PATHS]
    return specs


def run_all(
    args: argparse.Namespace, save: Callable[[list[dict[str, Any]]], Any] | None = None
) -> list[dict]:
    """Every group of cases (select at each of ``args.sizes``, then the training step at each of
    ``args.train_sizes``); ``save(rows)`` is called after each group, so a long run keeps what it measured."""
    groups: list[tuple[list[Spec], Callable[[Spec], str], Callable]] = []
    for n_rows in args.sizes if "select" in args.ops else []:
        groups.append((select_specs(n_rows, args), lambda s: "original", check_selection))
    for n_rows in args.train_sizes if "train_step" in args.ops else []:
        same_world = lambda s: "original" + ("_sharded" if s.world_size > 1 else "")  # noqa: E731
        groups.append((train_specs(n_rows, args), same_world, check_losses))
    rows = []
    for specs, baseline_of, check in groups:
        group = run_specs(specs, baseline_of, check, args.timeout)
        if save is not None:
            save(group)
        rows += group
    return rows


# ----------------------------------------------------------------------------------------------- cli
TABLE_COLUMNS: tuple[str, ...] = (
    "op", "n_rows", "case", "bank_dtype", "status", "seconds_median", "select_s_median",
    "speedup_vs_baseline", "peak_extra_mb", "bank_mb_per_rank", "untied_mismatches",
    "loss_diff_vs_original", "agree",
)  # fmt: skip


def print_table(rows: list[dict[str, Any]]) -> None:
    cells = [[str(row[column])[:48] for column in TABLE_COLUMNS] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(TABLE_COLUMNS)]
    print("  ".join(column.ljust(width) for column, width in zip(TABLE_COLUMNS, widths, strict=True)))
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _sizes(text: str) -> list[int]:
    try:
        values = [int(item.replace("_", "")) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"expected bank sizes >= 2, got {text!r}")
    return values


def _ops(text: str) -> list[str]:
    ops = [item.strip() for item in text.split(",") if item.strip()]
    if not ops or set(ops) - set(CASES):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {sorted(CASES)}, got {text!r}"
        )
    return ops


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--ops", type=_ops, default=list(CASES), help="select,train_step")
    parser.add_argument("--sizes", type=_sizes, default=[MARKET_ROWS, 1_000_000], help="bank rows N (select)")
    parser.add_argument(
        "--train-sizes",
        type=_sizes,
        default=None,
        help=f"bank rows N of the training step (default: {MARKET_ROWS}; cuda: also 1000000)",
    )
    parser.add_argument("--batch", type=int, default=None, help="global anchors of select (cpu 32, cuda 64)")
    parser.add_argument(
        "--train-batch", type=int, default=None, help="global images per step (cpu 8, cuda 32)"
    )
    parser.add_argument("--model", default=None, help="backbone of the step (cpu resnet18, cuda resnet50)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--bank-dtype", choices=BANK_DTYPES, default="auto")
    parser.add_argument("--warmup", type=int, default=1, help="untimed select calls first")
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"timed select calls (default 5; 2 when N > {LARGE_N})"
    )
    parser.add_argument("--train-warmup", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads over all ranks"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    parser.add_argument("--output", default="scl", help="results name or .csv path")
    args = parser.parse_args(argv)
    return finish_args(args, parser)


def finish_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Device-dependent defaults and range checks (``parser.error`` names the option)."""
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    args.train_sizes = args.train_sizes or ([MARKET_ROWS, 1_000_000] if cuda else [MARKET_ROWS])
    args.batch = args.batch or (64 if cuda else 32)
    args.train_batch = args.train_batch or (32 if cuda else 8)
    args.model = args.model or ("resnet50" if cuda else "resnet18")
    for name in ("batch", "train_batch"):
        if getattr(args, name) < 2 or getattr(args, name) % 2:
            parser.error(f"--{name.replace('_', '-')} must be an even number >= 2 (split over 2 ranks)")
    for name in ("train_steps", "threads", "height", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("warmup", "train_warmup"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if min(args.sizes) < args.batch:
        parser.error(f"--sizes must be >= --batch ({args.batch}), got {args.sizes}")
    args.scl = {}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = provenance()
    rows = run_all(args, lambda group: append_rows(args.output, group, stamp))
    print_table(rows)
    print(f"{len(rows)} rows -> {results_path(args.output)}")
    return 0 if all(row["status"] == "ok" or row["status"].startswith("skipped") for row in rows) else 1


if __name__ == "__main__":
    run_timed(main)
