"""Benchmark: chunked vectorised ReID evaluation (evaluate_features) against the per-query reference loop.

Synthetic splits with the label statistics of the real test sets (random features, pid centre + noise,
L2-normalised, so mAP is neither ~0 nor ~1):

* market: 3,368 queries x 15,913 gallery, 750 test ids, 6 cameras, 2,793 distractors (pid 0)
* msmt17: 11,659 queries x 82,161 gallery, 3,060 test ids, 15 cameras, no distractors

Both methods see the same distances: the loop computes them with ``pairwise_distance`` on the same query
chunks that ``evaluate_features`` uses (bit-identical), so both timings include the distance computation.
Each (size, method) runs in a fresh process for its peak memory (see benchmarks/common.py). The run checks
that mAP, mINP and every CMC entry agree to 1e-6 and appends one CSV row per method x size, with the
speed-up against the loop measured in the same run. ``--loop-queries N`` times the loop on the first N
queries only and extrapolates linearly; such rows say ``extrapolated=yes``.

    python benchmarks/bench_eval.py --sizes market,msmt17 --dim 256 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: `benchmarks` and `tests` import
from benchmarks.common import append_rows, choice_list, measure_isolated, provenance, results_path, run_timed
from reidscale.evaluation.metrics import UPDATE_BYTES_PER_ENTRY, evaluate_features, query_chunk_size
from reidscale.neighbours.distance import l2_normalize, pairwise_distance
from tests.support.reference.eval_loop import eval_loop

#: name → (queries, gallery, test ids, cameras, distractors)
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "market": (3368, 15913, 750, 6, 2793),
    "msmt17": (11659, 82161, 3060, 15, 0),
}
NOISE_NORM = 1.7  # norm of the per-image noise on a unit pid centre: Market mAP ~0.83, R1 ~0.99
METRIC = "cosine"
SEED = 0


def make_split(size: str, dim: int, device: str) -> dict[str, torch.Tensor]:
    """Features [N, dim] and labels of a synthetic split (each test id: >= 1 query, >= 1 gallery image)."""
    num_query, num_gallery, num_ids, num_cams, num_distractors = SIZES[size]
    generator = torch.Generator().manual_seed(SEED)
    centres = l2_normalize(torch.randn(num_ids + 1, dim, generator=generator))

    def pids(count: int) -> torch.Tensor:
        return torch.cat(
            [
                torch.arange(1, num_ids + 1),
                torch.randint(1, num_ids + 1, (count - num_ids,), generator=generator),
            ]
        )

    def features(labels: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(labels.numel(), dim, generator=generator) * (NOISE_NORM / dim**0.5)
        return l2_normalize(centres[labels] + noise)

    query_pids = pids(num_query)
    gallery_pids = torch.cat(
        [torch.zeros(num_distractors, dtype=torch.int64), pids(num_gallery - num_distractors)]
    )
    gallery_feats = features(gallery_pids)
    distractor_feats = l2_normalize(torch.randn(num_distractors, dim, generator=generator))
    gallery_feats[:num_distractors] = distractor_feats  # distractors: unrelated people
    return {
        "query_feats": features(query_pids).to(device),
        "gallery_feats": gallery_feats.to(device),
        "query_pids": query_pids,
        "query_camids": torch.randint(0, num_cams, (num_query,), generator=generator),
        "gallery_pids": gallery_pids,
        "gallery_camids": torch.randint(0, num_cams, (num_gallery,), generator=generator),
    }


def setup_vectorised(size: str, dim: int, device: str, chunk: int):
    """Case: evaluate_features on the whole split, chunk by chunk."""
    split = make_split(size, dim, device)
    return lambda: evaluate_features(**split, metric=METRIC, query_chunk=chunk).to_dict()


def setup_loop(size: str, dim: int, device: str, chunk: int, num_loop_queries: int):
    """Case: the reference loop over the first num_loop_queries queries, distances chunk by chunk."""
    split = make_split(size, dim, device)
    g_pids, g_cams = split["gallery_pids"].numpy(), split["gallery_camids"].numpy()

    def case() -> dict:
        sums, num_valid, num_skipped = {"mAP": 0.0, "mINP": 0.0, "cmc": np.zeros(50)}, 0, 0
        for begin in range(0, num_loop_queries, chunk):
            rows = slice(begin, min(begin + chunk, num_loop_queries))
            distances = (
                pairwise_distance(split["query_feats"][rows], split["gallery_feats"], METRIC).cpu().numpy()
            )
            q_pids, q_cams = split["query_pids"][rows].numpy(), split["query_camids"][rows].numpy()
            try:
                part = eval_loop(distances, q_pids, q_cams, g_pids, g_cams, max_rank=50)
            except ValueError:  # no valid query in this chunk
                num_skipped += len(q_pids)
                continue
            for key in ("mAP", "mINP", "cmc"):
                sums[key] = sums[key] + np.asarray(part[key]) * part["num_valid_queries"]
            num_valid += part["num_valid_queries"]
            num_skipped += part["num_skipped_queries"]
        if num_valid == 0:
            raise ValueError(f"no valid query among the first {num_loop_queries} queries")
        means = {key: (value / num_valid) for key, value in sums.items()}
        return {
            "mAP": float(means["mAP"]),
            "mINP": float(means["mINP"]),
            "cmc": means["cmc"].tolist(),
            "num_valid_queries": num_valid,
            "num_skipped_queries": num_skipped,
        }

    return case


def max_difference(first: dict, second: dict) -> float:
    """Largest |difference| over mAP, mINP and the CMC entries; inf when the query counts differ."""
    if (first["num_valid_queries"], first["num_skipped_queries"]) != (
        second["num_valid_queries"],
        second["num_skipped_queries"],
    ):
        return float("inf")
    cmc_diff = np.max(np.abs(np.asarray(first["cmc"]) - np.asarray(second["cmc"])))
    return float(max(abs(first["mAP"] - second["mAP"]), abs(first["mINP"] - second["mINP"]), cmc_diff))


def run_size(size: str, args: argparse.Namespace) -> list[dict]:
    """Measure both methods on one split; one CSV row per method."""
    num_query, num_gallery, num_ids, num_cams, num_distractors = SIZES[size]
    chunk = query_chunk_size(num_gallery, args.memory_budget_mb, UPDATE_BYTES_PER_ENTRY)
    loop_queries = num_query if args.loop_queries is None else min(num_query, args.loop_queries)
    load_before = os.getloadavg()[0]
    cuda = args.device.startswith("cuda")
    print(f"[{size}] vectorised: {args.repeats} repeat(s), query_chunk={chunk} ...", flush=True)
    vectorised = measure_isolated(setup_vectorised, (size, args.dim, args.device, chunk), args.repeats, cuda)
    print(
        f"[{size}] reference loop on {loop_queries}/{num_query} queries, {args.loop_repeats} repeat(s) ...",
        flush=True,
    )
    loop = measure_isolated(setup_loop, (size, args.dim, args.device, chunk, loop_queries), args.loop_repeats)
    extrapolated = loop_queries < num_query
    if extrapolated:  # compare on the same queries: evaluate the subset with the same chunking (not timed)
        split = make_split(size, args.dim, args.device)
        subset = {
            key: value[:loop_queries] if key.startswith("query") else value for key, value in split.items()
        }
        vectorised_on_loop_queries = evaluate_features(**subset, metric=METRIC, query_chunk=chunk).to_dict()
    else:
        vectorised_on_loop_queries = vectorised.result
    difference = max_difference(vectorised_on_loop_queries, loop.result)
    loop_full_seconds = loop.median_seconds * num_query / loop_queries
    common = {
        "size": size,
        "num_query": num_query,
        "num_gallery": num_gallery,
        "num_ids": num_ids,
        "num_cameras": num_cams,
        "num_distractors": num_distractors,
        "dim": args.dim,
        "metric": METRIC,
        "device_arg": args.device,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": f"{load_before:.2f}",
        "query_chunk": chunk,
        "memory_budget_mb": args.memory_budget_mb,
    }
    rows = []
    for method, measured, timed_queries, full_seconds, metrics in (
        ("vectorised", vectorised, num_query, vectorised.median_seconds, vectorised.result),
        ("reference_loop", loop, loop_queries, loop_full_seconds, loop.result),
    ):
        rows.append(
            {
                **common,
                "method": method,
                "repeats": len(measured.seconds),
                "queries_timed": timed_queries,
                "extrapolated": "yes" if timed_queries < num_query else "no",
                "seconds_median": f"{measured.median_seconds:.3f}",
                "seconds_min": f"{min(measured.seconds):.3f}",
                "seconds_full_split": f"{full_seconds:.3f}",
                "peak_mem_mb": f"{measured.peak_bytes / 2**20:.1f}",
                "memory_method": measured.memory_method,
                "speedup_vs_loop": f"{loop_full_seconds / full_seconds:.2f}",
                "mAP": f"{metrics['mAP']:.6f}",
                "rank1": f"{metrics['cmc'][0]:.6f}",
                "mINP": f"{metrics['mINP']:.6f}",
                "num_valid_queries": metrics["num_valid_queries"],
                "max_abs_diff_vs_loop": f"{difference:.3e}",
                "agree_1e-6": "yes" if difference <= 1e-6 else "NO",
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    columns = [
        "size",
        "method",
        "queries_timed",
        "extrapolated",
        "seconds_median",
        "seconds_full_split",
        "peak_mem_mb",
        "speedup_vs_loop",
        "mAP",
        "rank1",
        "mINP",
        "max_abs_diff_vs_loop",
        "agree_1e-6",
    ]
    widths = {column: max(len(column), *(len(str(row[column])) for row in rows)) for column in columns}
    print("  ".join(column.ljust(widths[column]) for column in columns))
    for row in rows:
        print("  ".join(str(row[column]).ljust(widths[column]) for column in columns))
    for row in rows:
        if row["extrapolated"] == "yes":
            print(
                f"NOTE: {row['size']} {row['method']}: timed on {row['queries_timed']} of {row['num_query']} "
                f"queries; seconds_full_split is a linear EXTRAPOLATION, not a measurement."
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="market,msmt17", help=f"comma-separated, from {sorted(SIZES)}")
    parser.add_argument("--dim", type=int, default=256, help="feature dimension (real models: 2048)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the vectorised evaluation")
    parser.add_argument("--loop-repeats", type=int, default=1, help="timed runs of the reference loop")
    parser.add_argument(
        "--loop-queries", type=int, default=None, help="time the loop on this many queries only"
    )
    parser.add_argument("--memory-budget-mb", type=int, default=1024, help="evaluation working-memory budget")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] for the features and the evaluation")
    parser.add_argument("--output", default=str(results_path("eval")), help="CSV file to append rows to")
    args = parser.parse_args(argv)
    sizes = choice_list(parser, "--sizes", args.sizes, sorted(SIZES))
    for name in ("dim", "repeats", "loop_repeats", "memory_budget_mb"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.loop_queries is not None and args.loop_queries < 1:
        parser.error("--loop-queries must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    args.sizes = sizes
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = provenance()
    print(f"{stamp['device']} | torch {stamp['torch']} | commit {stamp['commit']} | {METRIC}, dim {args.dim}")
    rows = [row for size in args.sizes for row in run_size(size, args)]
    print_table(rows)
    path = append_rows(args.output, rows, stamp)
    print(f"appended {len(rows)} rows to {path}")
    return 0 if all(row["agree_1e-6"] == "yes" for row in rows) else 1


if __name__ == "__main__":
    run_timed(main)
