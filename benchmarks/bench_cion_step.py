"""Benchmark: one CION training step (student forward + backward over 2 global and n local views, the EMA
teacher's forward over the 2 global views, the identity distillation loss, AdamW, the teacher's EMA on its
fp32 master and the centre update), in source images per second.

The step is the method's own code (``reidscale.objectives.cion.CionDistillation``: ``before_step``,
forward, ``after_step``) with the engine's AdamW over the engine's parameter groups
(``engine.param_groups.build_optimizer``), per-parameter clipping at 3 (``engine.clipping``) and the
released hyper-parameters, run in one plain process: no DeepSpeed (its overhead over plain PyTorch is
``bench_train.py``'s subject) and no data loading (views are pre-made random tensors on the device; the
input stream's own rate is ``bench_data.py --suites input``'s). Precision: fp32 on the CPU; on CUDA bf16
autocast with fp32 weights, channels-last and cuDNN autotuning. A source image is one image of the
batch, each seen as 2 + n views by the student and 2 by the teacher. Peak memory as in
``benchmarks/common.py`` (fresh process).

    python benchmarks/bench_cion_step.py                                   # CPU: ResNet50-IBN, B = 8
    python benchmarks/bench_cion_step.py --device cuda --batch 120 --repeats 10   # the paper's per-GPU batch
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: `benchmarks` imports
from benchmarks.common import append_rows, measure_isolated, provenance, run_timed

LR, WEIGHT_DECAY, CLIP = 5e-4, 0.04, 3.0


def make_step(
    model: str, batch: int, num_local: int, k: int, prototypes: int, size: tuple[int, int], device_name: str
):
    """Build the objective, optimizer and views (seed 0); return the step callable (loss as a float; the
    objective is its ``objective`` attribute)."""
    from reidscale.engine.clipping import clip_per_param_
    from reidscale.engine.param_groups import build_optimizer
    from reidscale.models import create_backbone
    from reidscale.objectives.base import TrainingContext
    from reidscale.objectives.cion import CionConfig, CionDistillation

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    config = CionConfig(num_prototypes=prototypes, num_local=num_local)
    objective = CionDistillation(create_backbone(model, img_size=size), config, lambda epoch: k).to(device)
    if cuda:
        objective = objective.to(memory_format=torch.channels_last)
    objective.setup(TrainingContext(device=device, steps_per_epoch=1000))
    objective.train()
    optimizer = build_optimizer(objective, "adamw", LR, WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(0)
    local = (size[0] // 2, size[1] // 2)
    views = [torch.randn(batch, 3, *size, generator=generator) for _ in range(2)]
    views += [torch.randn(batch, 3, *local, generator=generator) for _ in range(num_local)]
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    views = [view.to(device).contiguous(memory_format=memory_format) for view in views]
    values = {"momentum": 0.996, "temperature": 0.04}
    params = [p for p in objective.parameters() if p.requires_grad]
    step_index = [1000]  # past the frozen first epoch: the prototype layer trains too

    def step() -> float:
        objective.before_step(step_index[0], values)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out = objective({"views": views, "images_per_id": k})
        out.loss.backward()
        clip_per_param_([p.grad for p in params if p.grad is not None], CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.after_step(step_index[0], values)
        step_index[0] += 1
        return float(out.loss.detach())

    step.objective = objective  # type: ignore[attr-defined]  (for the benchmark's test)
    return step


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50_ibn_a")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=8, help="source images per step (N identities x K)")
    parser.add_argument("--num-local", type=int, default=8)
    parser.add_argument("--k", type=int, default=8, help="images per identity (the last K of the schedule)")
    parser.add_argument("--prototypes", type=int, default=65536)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 128), metavar=("H", "W"))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--output", default="cion_step", help="results CSV name or path")
    args = parser.parse_args(argv)
    if args.k < 1 or args.batch % args.k or args.repeats < 1 or args.warmup < 1:
        raise SystemExit("--k must divide --batch; --repeats and --warmup must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = provenance()
    print(f"{stamp['device']} | torch {stamp['torch']} | commit {stamp['commit']}")
    torch.set_num_threads(args.threads)
    case = (args.model, args.batch, args.num_local, args.k, args.prototypes, tuple(args.size), args.device)
    cuda = args.device == "cuda"
    result = measure_isolated(make_step, case, repeats=args.repeats, cuda=cuda, warmup=args.warmup)
    seconds = result.median_seconds
    row = {
        "model": args.model,
        "device_kind": args.device,
        "precision": "bf16 autocast" if cuda else "fp32",
        "batch": args.batch,
        "views": f"2+{args.num_local}",
        "size": f"{args.size[0]}x{args.size[1]}",
        "k": args.k,
        "prototypes": args.prototypes,
        "step_s": round(seconds, 4),
        "first_step_s": round(result.first_call_s or 0.0, 3),
        "source_images_per_s": round(args.batch / seconds, 2),
        "student_views_per_s": round(args.batch * (2 + args.num_local) / seconds, 1),
        "peak_mb": round(result.peak_bytes / 2**20, 1),
        "memory_method": result.memory_method,
        "loss": round(result.result, 5),
        "timer": result.timer,
        "repeats": args.repeats,
        "threads": args.threads,
    }
    print(row)
    print(f"appended 1 row to {append_rows(args.output, [row], stamp)}")
    return 0


if __name__ == "__main__":
    run_timed(main)
