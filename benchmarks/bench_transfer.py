"""What pre-training buys fine-tuning: the same BoT fine-tuning from random initialisation and from a
pre-trained backbone, same config, same steps, same seeds, same held-out evaluation.

For each seed S and each start (``random``, ``pretrained``) it runs ``reidscale finetune --config CONFIG``
(``--model.weights WEIGHTS`` for ``pretrained``; ``--run.seed S --train.seed S``) in a subprocess, reads the
run's ``results.json`` and its periodic evaluations from ``metrics.jsonl``, and appends one row per run to
``benchmarks/results/transfer.csv``: the metrics before and after fine-tuning, the mAP curve, the wall time
and the SHA-256 of the weights file (which pre-training run it was). It then prints the mean and standard
deviation over the seeds and the per-seed gain of the pre-trained start.

The default reproduces the README's table: ``configs/finetune_demo.yaml`` (ResNet-18 at 64×32 on the demo
corpus's Market split, 200 steps) from ``outputs/demo/backbone.pt``, which ``make demo`` writes::

    make demo && python benchmarks/bench_transfer.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: `benchmarks` imports
from benchmarks.common import append_rows, provenance, results_path, run_timed
from reidscale.tracking import read_jsonl_history
from reidscale.utils.io import file_sha256

ROOT = Path(__file__).resolve().parents[1]

STARTS = ("random", "pretrained")
METRICS = ("mAP", "R1", "mINP")


def map_curve(history: list[dict[str, Any]]) -> str:
    """``"step:mAP;..."`` (percent, 2 decimals) of the evaluations in a run's metrics history."""
    return ";".join(f"{row['step']}:{100 * row['eval/mAP']:.2f}" for row in history if "eval/mAP" in row)


def finetune_command(config: Path, run_dir: Path, name: str, seed: int, weights: Path | None) -> list[str]:
    """The ``reidscale finetune`` command line of one run (this interpreter)."""
    command = [sys.executable, "-m", "reidscale", "finetune", "--config", str(config)]
    command += [
        f"--run.output_dir={run_dir}",
        f"--run.name={name}",
        f"--run.seed={seed}",
        f"--train.seed={seed}",
    ]
    if weights is not None:
        command.append(f"--model.weights={weights}")
    return command


def run_one(args: argparse.Namespace, start: str, seed: int, weights_sha: str) -> dict[str, Any]:
    """Fine-tune once and return its row (RuntimeError with the log's tail when the run fails)."""
    name = f"{start}_s{seed}"
    weights = args.weights if start == "pretrained" else None
    log = args.runs_dir / f"{name}.log"
    shutil.rmtree(args.runs_dir / name, ignore_errors=True)  # this benchmark's own earlier run of the case
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(
            finetune_command(args.config, args.runs_dir, name, seed, weights),
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8").splitlines()[-30:])
        raise RuntimeError(f"fine-tuning {name} failed (exit {done.returncode}); log {log}:\n{tail}")
    results = json.loads((args.runs_dir / name / "results.json").read_text(encoding="utf-8"))
    history = read_jsonl_history(args.runs_dir / name / "metrics.jsonl")
    row: dict[str, Any] = {
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "start": start,
        "weights_sha256": weights_sha if start == "pretrained" else "",
        "seed": seed,
        "steps": results["steps"],
    }
    for when in ("before", "after"):
        row.update({f"{when}_{m}": f"{100 * results[when][m]:.2f}" for m in METRICS})
    row["map_curve"] = map_curve(history)
    row["seconds"] = f"{seconds:.1f}"
    return row


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Lines: per start, mean ± standard deviation over the seeds of each metric after fine-tuning; then
    the per-seed gain in mAP of the pre-trained start over the random one and its mean."""
    lines = []
    for start in STARTS:
        mine = [row for row in rows if row["start"] == start]
        if not mine:
            continue
        cells = []
        for metric in METRICS:
            values = [float(row[f"after_{metric}"]) for row in mine]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{metric} {statistics.mean(values):6.2f} ± {spread:5.2f}")
        lines.append(f"{start:<10} ({len(mine)} seeds): " + "  ".join(cells))
    after = {(row["start"], row["seed"]): float(row["after_mAP"]) for row in rows}
    seeds = sorted({row["seed"] for row in rows})
    gains = [
        after[("pretrained", seed)] - after[("random", seed)]
        for seed in seeds
        if ("pretrained", seed) in after and ("random", seed) in after
    ]
    if gains:
        listed = ", ".join(f"{gain:+.2f}" for gain in gains)
        lines.append(f"pre-trained − random, mAP per seed: {listed} (mean {statistics.mean(gains):+.2f})")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "finetune_demo.yaml")
    parser.add_argument(
        "--weights", type=Path, default=ROOT / "outputs" / "demo" / "backbone.pt", help="pre-trained backbone"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each runs both starts")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "outputs" / "transfer", help="run folders")
    parser.add_argument("--output", default=str(results_path("transfer")), help="CSV file to append rows to")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not args.seeds:
        parser.error("--seeds is empty")
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    if not args.weights.is_file():
        parser.error(f"--weights {args.weights}: no such file (the default is what `make demo` writes)")
    args.config, args.weights, args.runs_dir = args.config.resolve(), args.weights.resolve(), args.runs_dir
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = provenance()
    weights_sha = file_sha256(args.weights)
    print(f"{stamp['device']} | torch {stamp['torch']} | commit {stamp['commit']} | {args.config.name}")
    print(f"pre-trained backbone {args.weights} (sha256 {weights_sha[:12]})")
    rows = []
    for seed in args.seeds:
        for start in STARTS:
            row = run_one(args, start, seed, weights_sha)
            print(
                f"seed {seed} {start:<10} mAP {row['before_mAP']} -> {row['after_mAP']}, "
                f"R1 {row['after_R1']}, mINP {row['after_mINP']} ({row['seconds']} s)",
                flush=True,
            )
            rows.append(row)
    print("\n".join(summary(rows)))
    path = append_rows(args.output, rows, stamp)
    print(f"appended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    run_timed(main)
