"""Benchmark: CION's identity distillation loss, forward and backward, per-identity sums against the formula's
literal double loop.

Forms: ``sums`` (``reidscale.objectives.cion.identity_distillation_loss``: per-identity sums, O(V·B·C)) and
``literal`` (``tests/support/reference/cion_loss.py``: K(K − 1) + 1 cross entropies per pair of views, the
tests' oracle). Inputs: random fp32 head outputs, teacher [2·B, C], student [V·B, C] with gradient, a random
centre; the defaults are the released set-up (B = 120 images per GPU, 2 + 8 views, C = 65,536, K = 8 at the
end of the K schedule). Each form runs in a fresh process (peak memory over its calls, see
``benchmarks/common.py``), one warm-up call then ``--repeats`` timed calls of loss + backward. The run checks
that both forms agree (loss to 1e-5 relative, gradient to 1e-6 of its largest entry) and appends one row per
form with the speed-up against ``literal`` measured in the same run.

    python benchmarks/bench_cion_loss.py --batch 120 --views 10 --prototypes 65536 --k 8 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: `benchmarks` and `tests` import
from benchmarks.common import append_rows, choice_list, measure_isolated, provenance, run_timed
from reidscale.objectives.cion import identity_distillation_loss
from tests.support.reference.cion_loss import literal_loss

FORMS = {"sums": identity_distillation_loss, "literal": literal_loss}


def make_case(form: str, batch: int, views: int, prototypes: int, k: int, threads: int):
    """The inputs (seed 0) and a callable running ``form``'s loss and backward, returning (loss, gradient)."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(2 * batch, prototypes, generator=generator)
    student = torch.randn(views * batch, prototypes, generator=generator, requires_grad=True)
    center = 0.1 * torch.randn(prototypes, generator=generator)
    loss_fn = FORMS[form]

    def step() -> tuple[float, torch.Tensor]:
        student.grad = None
        loss = loss_fn(teacher, student, center, k)
        loss.backward()
        return loss.item(), student.grad

    return step


def run(args: argparse.Namespace, forms: list[str]) -> list[dict]:
    measured = {
        form: measure_isolated(
            make_case,
            (form, args.batch, args.views, args.prototypes, args.k, args.threads),
            repeats=args.repeats,
            warmup=1,
        )
        for form in forms
    }
    base = measured.get("literal")
    rows = []
    for form, result in measured.items():
        loss, grad = result.result
        agree = ""
        if base is not None:
            base_loss, base_grad = base.result
            scale = base_grad.abs().max().item()
            close = (
                abs(loss - base_loss) <= 1e-5 * abs(base_loss)
                and (grad - base_grad).abs().max() <= 1e-6 * scale
            )
            agree = "yes" if close else "no"
        rows.append(
            {
                "form": form,
                "batch": args.batch,
                "views": args.views,
                "prototypes": args.prototypes,
                "k": args.k,
                "seconds": round(result.median_seconds, 4),
                "first_call_s": round(result.first_call_s or 0.0, 4),
                "peak_mb": round(result.peak_bytes / 2**20, 1),
                "memory_method": result.memory_method,
                "loss": round(loss, 6),
                "agrees_with_literal": agree,
                "speedup_vs_literal": round(base.median_seconds / result.median_seconds, 2) if base else "",
                "threads": args.threads,
            }
        )
    return rows


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--batch", type=int, default=120, help="images per view (B = N x K)")
    parser.add_argument("--views", type=int, default=10, help="student views V (the first 2 are global)")
    parser.add_argument("--prototypes", type=int, default=65536, help="C")
    parser.add_argument("--k", type=int, default=8, help="images per identity K")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--output", default="cion_loss", help="results CSV name or path")
    args = parser.parse_args(argv)
    forms = choice_list(parser, "--forms", args.forms, tuple(FORMS))
    if args.k < 1 or args.batch % args.k or args.views < 2 or args.prototypes < 1 or args.repeats < 1:
        raise SystemExit("--k must divide --batch, --views >= 2, --prototypes and --repeats >= 1")
    return args, forms


def main(argv: list[str] | None = None) -> int:
    args, forms = parse_args(argv)
    stamp = provenance()
    print(f"{stamp['device']} | torch {stamp['torch']} | commit {stamp['commit']}")
    rows = run(args, forms)
    for row in rows:
        print(row)
    print(f"appended {len(rows)} rows to {append_rows(args.output, rows, stamp)}")
    return 0 if all(row["agrees_with_literal"] in ("yes", "") for row in rows) else 1


if __name__ == "__main__":
    run_timed(main)
