"""Benchmark: training-step throughput of the engine (DeepSpeed ZeRO 0-3) against plain PyTorch DDP.

The measured step is the real fine-tuning step: ``FinetuneObjective`` (BNNeck, label-smoothed CE + soft-margin
batch-hard triplet) over ``create_backbone(model)`` at 256×128, one PK micro-batch of synthetic images and
pids per rank, pre-made on the device (no data loading). Each case is one ``torchrun`` launch of
``world_size`` ranks (CPU: gloo, ``--threads`` per rank; ``--device cuda``: nccl, one GPU per rank):

* ``zero<S>``: ``reidscale.engine.trainer.Trainer`` at ZeRO stage S; the figures are the engine's own
  per-step throughput metrics (``StepTimer``), read through a recording tracker (``log_every=1``).
* ``ddp``: ``DistributedDataParallel`` around the same objective (same seed, so the same weights), the same
  AdamW over the same parameter groups (``build_optimizer``), the same batches, timed by the same
  ``StepTimer`` phases. fp32 runs in fp32; bf16 uses ``torch.autocast`` (fp32 weights and AdamW), whereas
  DeepSpeed bf16 keeps bf16 weights with fp32 master copies: the rows say which.

Both paths use a constant learning rate, so their loss curves must agree (fp32: same forward at step 0); the
rows carry ``loss_step0`` and ``max_loss_diff_vs_ddp`` as a check that the same computation was timed.
Warm-up steps are excluded; throughput is the median over the timed steps of images/s summed over ranks.
Peak memory is the engine's ``peak_memory_mb`` (CUDA allocator peak; on the CPU the process's RSS high-water
mark, a fresh process per case, so it includes the interpreter and libraries: ``start_rss_mb`` is the value
before the model was built). A case that fails gets a row with ``status`` saying why (never dropped).
On a CPU without native bf16 (e.g. no AVX-512 BF16) bf16 works but runs ~15-20x slower than fp32, so the
CPU default is fp32 only; ask for ``--precisions bf16`` explicitly.

    python benchmarks/bench_train.py                       # CPU: 2 ranks, fp32, PK 2x2, 2 warm-up + 4 timed
    python benchmarks/bench_train.py --models vit_small --precisions bf16 --warmup-steps 1 --timed-steps 2
    python benchmarks/bench_train.py --device cuda --precisions bf16 --micro-batch 64 --timed-steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # repo root: `benchmarks` and `reidscale` import when run as a script
from benchmarks.common import append_rows, provenance, results_path, run_timed  # noqa: E402
from reidscale.tracking.base import MetricValue, Tracker  # noqa: E402
from reidscale.utils.io import atomic_write_json  # noqa: E402

MODELS: tuple[str, ...] = ("resnet50_ibn_a", "vit_small")
STAGES: tuple[int, ...] = (0, 1, 2, 3)
NUM_CLASSES = 751  # Market-1501 training identities: the classifier size of the real fine-tuning step
LR, WEIGHT_DECAY = 3.5e-4, 5e-4
DISTINCT_BATCHES = 4  # pre-made micro-batches per rank, cycled over the steps
WITHIN = 0.05  # the GPU goal: ZeRO 0/1/2 within 5% of DDP
EXCEPTION_LINE = re.compile(r"\b([\w.]*(?:Error|Exception|Interrupt)): .*")


@dataclass
class CaseSpec:
    """One measured configuration (JSON-serialisable: it travels to the ranks as a file)."""

    model: str
    method: str  # "ddp" or "zero"
    stage: int | None  # ZeRO stage for method "zero"
    precision: str  # "fp32" or "bf16"
    micro_batch: int
    images_per_id: int
    warmup_steps: int
    timed_steps: int
    height: int
    width: int
    device: str  # "cpu" or "cuda"
    world_size: int
    threads: int
    seed: int = 0

    @property
    def name(self) -> str:
        return "ddp" if self.method == "ddp" else f"zero{self.stage}"


# ------------------------------------------------------------------------------------------ ranks
def make_batches(spec: CaseSpec, rank: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """This rank's distinct PK micro-batches: ``image`` [B, 3, H, W] (standard normal), ``pid`` [B]
    (B // images_per_id identities, each repeated images_per_id times, drawn per rank and batch)."""
    ids = spec.micro_batch // spec.images_per_id
    batches = []
    for index in range(DISTINCT_BATCHES):
        gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + rank * 1_009 + index)
        images = torch.randn(spec.micro_batch, 3, spec.height, spec.width, generator=gen)
        pids = torch.randperm(NUM_CLASSES, generator=gen)[:ids].repeat_interleave(spec.images_per_id)
        batches.append({"image": images.to(device), "pid": pids.to(device)})
    return batches


def build_objective(spec: CaseSpec) -> torch.nn.Module:
    """The fine-tuning objective over ``spec.model`` (seeded: the same weights on every rank and path)."""
    from reidscale.models import create_backbone
    from reidscale.objectives.finetune import FinetuneObjective

    torch.manual_seed(spec.seed)
    backbone = create_backbone(spec.model, img_size=(spec.height, spec.width))
    return FinetuneObjective(backbone, NUM_CLASSES)


class RecordingTracker(Tracker):
    """Keeps every logged metrics dict with the wall-clock time it arrived (one per optimizer step)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[float, dict[str, MetricValue]]] = []
        self.config: dict[str, Any] = {}

    def _write_metrics(self, metrics: dict[str, MetricValue], step: int) -> None:
        self.records.append((time.perf_counter(), metrics))

    def _write_config(self, config: dict[str, Any]) -> None:
        self.config = config

    def _write_image(self, key: str, path: Path, step: int, caption: str | None) -> None:
        raise ValueError(f"the benchmark logs no images, got {key!r}")


def run_engine(spec: CaseSpec, device: torch.device, run_dir: Path) -> tuple[list, list[float], str]:
    """The Trainer at ZeRO ``spec.stage``: (per-step (time, metrics), losses, stage DeepSpeed reports)."""
    from reidscale.engine.config import CheckpointConfig, OptimizerConfig, ScheduleConfig, TrainConfig
    from reidscale.engine.trainer import Trainer

    steps = spec.warmup_steps + spec.timed_steps
    config = TrainConfig(
        zero_stage=spec.stage,  # type: ignore[arg-type]
        precision=spec.precision,  # type: ignore[arg-type]
        micro_batch=spec.micro_batch,
        max_steps=steps,
        optimizer=OptimizerConfig(name="adamw", lr=LR, weight_decay=WEIGHT_DECAY),
        schedule=ScheduleConfig(min_lr=LR),  # constant lr, as the DDP loop
        checkpoint=CheckpointConfig(dir=str(run_dir / "checkpoints"), keep_last=1),
        log_every=1,
        seed=spec.seed,
    )
    tracker = RecordingTracker()
    trainer = Trainer(build_objective(spec), config, run_dir, tracker=tracker)
    batches = make_batches(spec, trainer.rank, device)
    result = trainer.run([batches[step % len(batches)] for step in range(steps)])
    return tracker.records, result.losses, str(trainer.engine.zero_optimization_stage())


def run_ddp(spec: CaseSpec, device: torch.device, rank: int, world: int) -> tuple[list, list[float], str]:
    """Plain DDP + the engine's AdamW over the same parameter groups; same StepTimer phases as the engine."""
    from torch.nn.parallel import DistributedDataParallel

    from reidscale.engine.param_groups import build_optimizer
    from reidscale.engine.throughput import StepTimer

    objective = build_objective(spec).to(device)
    model = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(objective, "adamw", LR, WEIGHT_DECAY)
    batches = make_batches(spec, rank, device)
    timer = StepTimer(device)
    records, losses = [], []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.precision == "bf16")
    for step in range(spec.warmup_steps + spec.timed_steps):
        timer.reset()
        with timer.phase("data"):
            batch = batches[step % len(batches)]
        with timer.phase("forward"), autocast:
            out = model(batch)
        timer.images += out.num_images
        with timer.phase("backward"):
            out.loss.backward()
        with timer.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach().float()))
        records.append((time.perf_counter(), timer.metrics(world)))
    return records, losses, "none (DDP)"


def worker(spec_path: Path, out_path: Path) -> None:
    """Entry point of every rank: run the case, gather per-rank records, rank 0 writes the JSON."""
    import torch.distributed as torch_dist

    from reidscale.engine.distributed import distributed
    from reidscale.engine.throughput import peak_memory_mb

    spec = CaseSpec(**json.loads(spec_path.read_text()))
    with distributed() as info:
        start_mb = peak_memory_mb(info.device)
        if spec.method == "ddp":
            records, losses, stage = run_ddp(spec, info.device, info.rank, info.world_size)
        else:
            records, losses, stage = run_engine(spec, info.device, out_path.parent / "run")
        mine = {"records": records, "losses": losses, "stage": stage, "start_mb": start_mb}
        mine.update({"threads": torch.get_num_threads(), "backend": info.backend})
        gathered: list[Any] = [None] * info.world_size
        torch_dist.all_gather_object(gathered, mine)
        if info.rank == 0:
            atomic_write_json(out_path, {"world_size": info.world_size, "ranks": gathered})


# ----------------------------------------------------------------------------------------- launch
def launch_case(spec: CaseSpec, workdir: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``spec`` with torchrun; the rank-0 JSON, or ``{"error": why}`` when the launch failed."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path, log_path = (workdir / name for name in ("spec.json", "result.json", "log.txt"))
    atomic_write_json(spec_path, asdict(spec))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(spec.world_size), __file__, "--worker", str(spec_path), str(out_path)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads), "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    try:
        with log_path.open("w") as log:
            done = subprocess.run(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
            )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s (log: {log_path})"}
    if done.returncode != 0 or not out_path.exists():
        return {"error": f"rc={done.returncode}: {last_error(log_path.read_text(errors='replace'))}"}
    return json.loads(out_path.read_text())


def last_error(log: str) -> str:
    """The last exception a rank raised in ``log`` ("ValueError: ..."; torchrun's own ChildFailedError
    is skipped), else the last non-empty line; one line without commas, at most 300 characters."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    found = None
    for line in reversed(lines):
        match = EXCEPTION_LINE.search(line)
        if match and not match.group(1).endswith("ChildFailedError"):
            found = match.group(0)
            break
    return (found or (lines[-1] if lines else "no output")).replace(",", ";")[:300]


# ------------------------------------------------------------------------------------------- rows
def case_specs(model: str, precision: str, stages: list[int], **settings: Any) -> list[CaseSpec]:
    """The DDP baseline first, then one case per ZeRO stage, all with the same ``settings``."""
    specs = [CaseSpec(model=model, method="ddp", stage=None, precision=precision, **settings)]
    specs += [CaseSpec(model=model, method="zero", stage=s, precision=precision, **settings) for s in stages]
    return specs


def median_of(records: list[dict[str, float]], key: str) -> float:
    return statistics.median(record[key] for record in records)


def summarise(spec: CaseSpec, raw: dict[str, Any]) -> dict[str, Any]:
    """Figures of one finished case from the ranks' records (warm-up steps dropped)."""
    ranks = raw["ranks"]
    timed = [[metrics for _, metrics in rank["records"][spec.warmup_steps :]] for rank in ranks]
    first = ranks[0]
    times = [stamp for stamp, _ in first["records"]]
    periods = [times[i] - times[i - 1] for i in range(max(spec.warmup_steps, 1), len(times))]
    return {
        "images_per_s_per_rank": statistics.mean(
            median_of(rank, "throughput/images_per_s_per_rank") for rank in timed
        ),
        "images_per_s_total": median_of(timed[0], "throughput/images_per_s"),
        "step_s_median": median_of(timed[0], "throughput/step_s"),
        "period_s_median": statistics.median(periods) if periods else float("nan"),
        "forward_s": median_of(timed[0], "time/forward_s"),
        "backward_s": median_of(timed[0], "time/backward_s"),
        "optimizer_s": median_of(timed[0], "time/optimizer_s"),
        "data_wait_fraction": median_of(timed[0], "throughput/data_wait_fraction"),
        "peak_mem_mb": max(rank[-1]["memory/peak_mb"] for rank in timed),
        "start_rss_mb": max(rank["start_mb"] for rank in ranks),
        "losses": first["losses"],
        "stage": first["stage"],
        "threads": first["threads"],
        "backend": first["backend"],
    }


def precision_detail(spec: CaseSpec) -> str:
    if spec.precision == "fp32":
        return "fp32"
    if spec.method == "ddp":
        return "torch.autocast bf16 (fp32 weights and AdamW)"
    return "deepspeed bf16 (bf16 weights and grads; fp32 master weights in the optimizer)"


def build_row(
    spec: CaseSpec, raw: dict[str, Any], baseline: dict[str, Any] | None, loads: tuple[float, float]
) -> dict:
    """One CSV row; ``baseline`` is the DDP summary of the same model and precision (None if it failed);
    ``loads``: 1-minute load average when the run started and when this case started (the latter counts
    the previous case's own ranks: about 2 after a busy case on 2 cores)."""
    memory = (
        "cuda: max_memory_allocated" if spec.device == "cuda" else "cpu: ru_maxrss of a fresh rank process"
    )
    row: dict[str, Any] = {
        "model": spec.model,
        "case": spec.name,
        "zero_stage": "" if spec.stage is None else spec.stage,
        "precision": spec.precision,
        "precision_detail": precision_detail(spec),
        "device_arg": spec.device,
        "launcher": f"torchrun {spec.world_size} ranks",
        "world_size": spec.world_size,
        "threads_per_rank": spec.threads,
        "image_size": f"{spec.height}x{spec.width}",
        "micro_batch": spec.micro_batch,
        "pk": f"{spec.micro_batch // spec.images_per_id}x{spec.images_per_id}",
        "warmup_steps": spec.warmup_steps,
        "timed_steps": spec.timed_steps,
        "load_avg_1m_run_start": f"{loads[0]:.2f}",
        "load_avg_1m_case_start": f"{loads[1]:.2f}",
        "status": "ok" if "error" not in raw else f"FAILED {raw['error']}",
    }
    figures = dict.fromkeys(FIGURE_COLUMNS, "")
    if "error" not in raw:
        figures.update(figure_columns(spec, summarise(spec, raw), baseline, memory))
    return {**row, **figures}


FIGURE_COLUMNS: tuple[str, ...] = (
    "backend",
    "deepspeed_stage",
    "images_per_s_per_rank",
    "images_per_s_total",
    "ratio_vs_ddp",
    "within_5pct_of_ddp",
    "step_s_median",
    "period_s_median",
    "forward_s",
    "backward_s",
    "optimizer_s",
    "data_wait_fraction",
    "peak_mem_mb",
    "start_rss_mb",
    "memory_method",
    "loss_step0",
    "max_loss_diff_vs_ddp",
)


def figure_columns(spec: CaseSpec, mine: dict, baseline: dict | None, memory: str) -> dict[str, Any]:
    """The measured columns of a finished case, ratios against the same run's DDP baseline."""
    if spec.method == "ddp":
        ratio, within, loss_diff = "1.000", "baseline", ""
    elif baseline is None:
        ratio, within, loss_diff = "", "n/a (ddp failed)", ""
    else:
        value = mine["images_per_s_total"] / baseline["images_per_s_total"]
        ratio, within = f"{value:.3f}", "yes" if value >= 1.0 - WITHIN else "no"
        pairs = zip(mine["losses"], baseline["losses"], strict=True)
        loss_diff = f"{max(abs(a - b) for a, b in pairs):.2e}"
    return {
        "backend": mine["backend"],
        "deepspeed_stage": mine["stage"],
        "images_per_s_per_rank": f"{mine['images_per_s_per_rank']:.3f}",
        "images_per_s_total": f"{mine['images_per_s_total']:.3f}",
        "ratio_vs_ddp": ratio,
        "within_5pct_of_ddp": within,
        "step_s_median": f"{mine['step_s_median']:.4f}",
        "period_s_median": f"{mine['period_s_median']:.4f}",
        "forward_s": f"{mine['forward_s']:.4f}",
        "backward_s": f"{mine['backward_s']:.4f}",
        "optimizer_s": f"{mine['optimizer_s']:.4f}",
        "data_wait_fraction": f"{mine['data_wait_fraction']:.4f}",
        "peak_mem_mb": f"{mine['peak_mem_mb']:.0f}",
        "start_rss_mb": f"{mine['start_rss_mb']:.0f}" if spec.device == "cpu" else "",
        "memory_method": memory,
        "loss_step0": f"{mine['losses'][0]:.6f}",
        "max_loss_diff_vs_ddp": loss_diff,
    }


def run_cases(specs: list[CaseSpec], timeout_s: float) -> list[dict[str, Any]]:
    """Launch every case (DDP first: it is the baseline of the others) and return one row per case."""
    rows, baseline, run_load = [], None, os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for index, spec in enumerate(specs):
            load = os.getloadavg()[0]
            print(f"[{spec.model} {spec.precision}] {spec.name} (load {load:.2f}) ...", flush=True)
            raw = launch_case(spec, Path(tmp) / f"case{index}_{spec.name}", timeout_s)
            if spec.method == "ddp":
                baseline = None if "error" in raw else summarise(spec, raw)
            rows.append(build_row(spec, raw, baseline, (run_load, load)))
            figure = f"  {rows[-1]['images_per_s_total']} images/s" if "error" not in raw else ""
            print(f"    {rows[-1]['status']}{figure}", flush=True)
    return rows


# --------------------------------------------------------------------------------------------- cli
TABLE_COLUMNS: tuple[str, ...] = (
    "model",
    "case",
    "precision",
    "status",
    "images_per_s_per_rank",
    "images_per_s_total",
    "ratio_vs_ddp",
    "within_5pct_of_ddp",
    "step_s_median",
    "forward_s",
    "backward_s",
    "optimizer_s",
    "peak_mem_mb",
    "max_loss_diff_vs_ddp",
)


def print_table(rows: list[dict[str, Any]]) -> None:
    cells = [[str(row[column])[:60] for column in TABLE_COLUMNS] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(TABLE_COLUMNS)]
    print("  ".join(column.ljust(width) for column, width in zip(TABLE_COLUMNS, widths, strict=True)))
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _csv_list(text: str, cast: type, option: str) -> list:
    try:
        values = [cast(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{option}: expected a comma-separated list, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{option}: empty list")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--models", default=",".join(MODELS), help="comma-separated backbone registry names")
    add("--stages", default="0,1,2,3", help="comma-separated ZeRO stages (0-3)")
    add("--precisions", default=None, help="fp32 and/or bf16 (default: bf16 on cuda, fp32 on cpu)")
    add("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (gloo) or cuda (nccl, a GPU per rank)")
    add("--world-size", type=int, default=2, help="ranks (torchrun --nproc_per_node)")
    add("--threads", type=int, default=1, help="OMP_NUM_THREADS per rank")
    add("--micro-batch", type=int, default=4, help="images per rank per step (P x K, K = --images-per-id)")
    add("--images-per-id", type=int, default=2, help="K of the PK micro-batch")
    add("--warmup-steps", type=int, default=2, help="untimed steps first")
    add("--timed-steps", type=int, default=4, help="timed steps (median reported)")
    add("--height", type=int, default=256)
    add("--width", type=int, default=128)
    add("--timeout", type=float, default=600.0, help="seconds per case before it is reported failed")
    add("--output", default=str(results_path("train")), help="CSV file to append rows to")
    args = parser.parse_args(argv)
    try:
        args.models = _csv_list(args.models, str, "--models")
        args.stages = _csv_list(args.stages, int, "--stages")
        default = "bf16" if args.device == "cuda" else "fp32"
        args.precisions = _csv_list(args.precisions or default, str, "--precisions")
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if any(stage not in STAGES for stage in args.stages):
        parser.error(f"--stages must be among {STAGES}, got {args.stages}")
    if any(precision not in ("fp32", "bf16") for precision in args.precisions):
        parser.error(f"--precisions must be fp32 and/or bf16, got {args.precisions}")
    for name in ("world_size", "threads", "micro_batch", "images_per_id", "timed_steps", "height", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup_steps < 0:
        parser.error(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    if (
        args.images_per_id < 2
        or args.micro_batch % args.images_per_id
        or args.micro_batch < 2 * args.images_per_id
    ):
        parser.error(
            f"--micro-batch ({args.micro_batch}) must be P x --images-per-id ({args.images_per_id}) with "
            "P >= 2 and K >= 2 (the batch-hard triplet needs positives and negatives)"
        )
    if args.device == "cuda" and torch.cuda.device_count() < args.world_size:
        parser.error(f"--device cuda needs {args.world_size} GPUs, found {torch.cuda.device_count()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = provenance()
    load = os.getloadavg()[0]
    print(f"{stamp['device']} | torch {stamp['torch']} | commit {stamp['commit']} | load {load:.2f}")
    settings = {
        key: getattr(args, key)
        for key in ("micro_batch", "images_per_id", "warmup_steps", "timed_steps", "height", "width")
    }
    settings.update(device=args.device, world_size=args.world_size, threads=args.threads)
    specs = [
        spec
        for model in args.models
        for precision in args.precisions
        for spec in case_specs(model, precision, args.stages, **settings)
    ]
    rows = run_cases(specs, args.timeout)
    print_table(rows)
    path = append_rows(args.output, rows, stamp)
    print(f"appended {len(rows)} rows to {path}")
    return 0 if all(row["status"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        run_timed(main)
