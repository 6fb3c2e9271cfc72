"""benchmarks/bench_cion_step.py: a tiny end-to-end run writes one well-formed row, and the step it times
is a real training step (the loss it reports is the objective's loss of the step's inputs)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from benchmarks import bench_cion_step as bench


def test_a_tiny_run_appends_one_row(tmp_path: Path) -> None:
    out = tmp_path / "cion_step.csv"
    argv = ["--model", "resnet18", "--batch", "4", "--k", "2", "--num-local", "2", "--prototypes", "64"]
    argv += ["--size", "32", "16", "--repeats", "1", "--threads", "1", "--output", str(out)]
    assert bench.main(argv) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert row["model"] == "resnet18" and row["views"] == "2+2" and row["size"] == "32x16"
    seconds = float(row["step_s"])
    assert seconds > 0 and math.isclose(float(row["source_images_per_s"]), 4 / seconds, rel_tol=0.01)
    assert 0 < float(row["loss"]) < 2 * math.log(64) and row["commit"] and row["device"]


def test_the_timed_step_trains_the_student_and_moves_the_teacher() -> None:
    step = bench.make_step("resnet18", 4, 2, 2, 64, (32, 16), "cpu")
    objective = step.objective
    student_before = objective.student.head.prototypes.detach().clone()
    teacher_before = objective.teacher.head.prototypes.detach().clone()
    first = step()
    assert math.isfinite(first)
    assert not objective.student.head.prototypes.equal(student_before)  # past the frozen epoch
    assert not objective.teacher.head.prototypes.equal(teacher_before)
    assert objective.center.abs().sum() > 0
