"""benchmarks/bench_train.py: the summary of rank records against hand-worked numbers, the PK batches, the
argument checks, and a 2-rank smoke run (DDP + ZeRO-1 + a stage the engine refuses) on a tiny ResNet-18."""

from __future__ import annotations

import csv

import pytest
import torch

from benchmarks import bench_train as bench
from benchmarks.common import PROVENANCE_COLUMNS, append_rows
from reidscale.models import create_backbone
from reidscale.objectives.finetune import FinetuneObjective
from tests.support.processes import HANG_GUARD_S

pytestmark = pytest.mark.deepspeed

TINY = {
    "micro_batch": 4,
    "images_per_id": 2,
    "warmup_steps": 1,
    "timed_steps": 2,
    "height": 64,
    "width": 32,
    "device": "cpu",
    "world_size": 2,
    "threads": 1,
}


def _record(total: float, per_rank: float, step_s: float, peak: float) -> dict[str, float]:
    return {
        "throughput/images_per_s": total,
        "throughput/images_per_s_per_rank": per_rank,
        "throughput/step_s": step_s,
        "throughput/data_wait_fraction": 0.01,
        "time/forward_s": step_s / 4,
        "time/backward_s": step_s / 2,
        "time/optimizer_s": step_s / 8,
        "memory/peak_mb": peak,
    }


def _raw(totals: list[float], rank1_per_rank: list[float], times: list[float]) -> dict:
    rank0 = [
        (t, _record(v, v / 2, 8 / v, 100.0 + i)) for i, (t, v) in enumerate(zip(times, totals, strict=True))
    ]
    rank1 = [(t, _record(v, p, 1.0, 90.0)) for t, v, p in zip(times, totals, rank1_per_rank, strict=True)]
    common = {"stage": "1", "threads": 1, "backend": "gloo"}
    return {
        "world_size": 2,
        "ranks": [
            {"records": rank0, "losses": [5.0, 4.0, 3.5, 3.0], "start_mb": 50.0, **common},
            {"records": rank1, "losses": [5.1, 4.1, 3.6, 3.1], "start_mb": 60.0, **common},
        ],
    }


def test_summarise_drops_warmup_and_takes_medians() -> None:
    spec = bench.CaseSpec("m", "zero", 1, "fp32", **{**TINY, "timed_steps": 3})
    # step 0 is warm-up (1000 images/s must not count); timed totals 10, 30, 20 → median 20
    raw = _raw([1000.0, 10.0, 30.0, 20.0], [1000.0, 4.0, 12.0, 8.0], [0.0, 1.0, 3.0, 4.5])
    got = bench.summarise(spec, raw)
    assert got["images_per_s_total"] == 20.0
    assert got["images_per_s_per_rank"] == pytest.approx((10.0 + 8.0) / 2)  # mean of rank medians
    assert got["step_s_median"] == pytest.approx(8 / 20)
    assert got["period_s_median"] == pytest.approx(1.5)  # intervals 1.0 (timed step 1), 2.0, 1.5
    assert got["backward_s"] == pytest.approx(8 / 20 / 2)
    assert got["peak_mem_mb"] == 103.0 and got["start_rss_mb"] == 60.0
    assert got["losses"] == [5.0, 4.0, 3.5, 3.0]


def test_rows_ratio_within_and_failed_baseline() -> None:
    ddp = bench.CaseSpec("m", "ddp", None, "fp32", **{**TINY, "timed_steps": 3})
    zero = bench.CaseSpec("m", "zero", 2, "fp32", **{**TINY, "timed_steps": 3})
    ddp_raw = _raw([1.0, 20.0, 20.0, 20.0], [1.0, 10.0, 10.0, 10.0], [0.0, 1.0, 2.0, 3.0])
    zero_raw = _raw([1.0, 19.2, 19.0, 19.0], [1.0, 9.5, 9.5, 9.5], [0.0, 1.0, 2.0, 3.0])
    zero_raw["ranks"][0]["losses"] = [5.0, 4.0, 3.5, 3.25]
    baseline = bench.summarise(ddp, ddp_raw)
    row = bench.build_row(zero, zero_raw, baseline, (0.5, 1.5))
    assert row["ratio_vs_ddp"] == "0.950" and row["within_5pct_of_ddp"] == "yes"  # 19 / 20
    assert row["max_loss_diff_vs_ddp"] == "2.50e-01" and row["status"] == "ok"
    assert (row["load_avg_1m_run_start"], row["load_avg_1m_case_start"]) == ("0.50", "1.50")
    slower = _raw([1.0, 18.0, 18.0, 18.0], [1.0, 9.0, 9.0, 9.0], [0.0, 1.0, 2.0, 3.0])
    assert bench.build_row(zero, slower, baseline, (0.5, 1.5))["within_5pct_of_ddp"] == "no"
    orphan = bench.build_row(zero, zero_raw, None, (0.5, 1.5))
    assert orphan["within_5pct_of_ddp"] == "n/a (ddp failed)" and orphan["ratio_vs_ddp"] == ""
    failed = bench.build_row(zero, {"error": "rc=1: ValueError: boom"}, baseline, (0.5, 1.5))
    assert failed["status"] == "FAILED rc=1: ValueError: boom"
    assert all(failed[column] == "" for column in bench.FIGURE_COLUMNS)
    assert list(failed) == list(row)  # a failed case keeps every column: append_rows accepts it


def test_batches_are_pk_and_differ_per_rank() -> None:
    spec = bench.CaseSpec("m", "ddp", None, "fp32", **{**TINY, "micro_batch": 6, "images_per_id": 3})
    rank0 = bench.make_batches(spec, 0, torch.device("cpu"))
    rank1 = bench.make_batches(spec, 1, torch.device("cpu"))
    assert len(rank0) == bench.DISTINCT_BATCHES
    for batch in rank0:
        assert batch["image"].shape == (6, 3, 64, 32)
        pids = batch["pid"].tolist()
        assert pids[0:3] == [pids[0]] * 3 and pids[3:6] == [pids[3]] * 3 and pids[0] != pids[3]
        assert all(0 <= pid < bench.NUM_CLASSES for pid in pids)
    assert not torch.equal(rank0[0]["image"], rank1[0]["image"])
    assert not torch.equal(rank0[0]["image"], rank0[1]["image"])
    again = bench.make_batches(spec, 0, torch.device("cpu"))
    assert torch.equal(again[0]["image"], rank0[0]["image"]) and torch.equal(again[0]["pid"], rank0[0]["pid"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stages", "0,4"], "--stages must be among"),
        (["--stages", "a"], "--stages: expected a comma-separated list"),
        (["--precisions", "fp16"], "--precisions must be fp32 and/or bf16"),
        (["--micro-batch", "6", "--images-per-id", "4"], "--micro-batch (6) must be P x --images-per-id (4)"),
        (["--micro-batch", "2", "--images-per-id", "2"], "P >= 2"),
        (["--timed-steps", "0"], "--timed-steps must be >= 1"),
        (["--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
    ],
)
def test_bad_arguments_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_defaults_are_the_target_models_at_256x128() -> None:
    args = bench.parse_args([])
    assert args.models == ["resnet50_ibn_a", "vit_small"] and args.stages == [0, 1, 2, 3]
    assert (args.height, args.width, args.precisions, args.world_size) == (256, 128, ["fp32"], 2)


@pytest.mark.multiproc
def test_smoke_ddp_zero1_and_a_failing_stage(tmp_path) -> None:
    specs = bench.case_specs("resnet18", "fp32", [1, 4], **TINY)  # stage 4: the engine refuses it
    rows = bench.run_cases(specs, timeout_s=HANG_GUARD_S)
    ddp, zero1, zero4 = rows
    assert [row["case"] for row in rows] == ["ddp", "zero1", "zero4"]
    assert ddp["status"] == "ok" and zero1["status"] == "ok", (ddp["status"], zero1["status"])
    assert zero4["status"].startswith("FAILED rc=") and "zero_stage" in zero4["status"]
    assert zero4["images_per_s_total"] == ""
    assert zero1["deepspeed_stage"] == "1" and ddp["backend"] == "gloo"
    assert (zero1["micro_batch"], zero1["timed_steps"], zero1["threads_per_rank"]) == (4, 2, 1)
    for row in (ddp, zero1):
        # The total is the sum of the ranks' own rates. Over 2 timed steps a median is a mean, so the
        # median total is exactly twice the mean of the per-rank medians (each rank times its own step).
        total, per_rank = float(row["images_per_s_total"]), float(row["images_per_s_per_rank"])
        assert total == pytest.approx(2 * per_rank, abs=2e-3)
        # rank 0 alone contributes mean(4 / step time) >= 4 / mean(step time) (Jensen), so the total does too
        assert total >= 4 / float(row["step_s_median"]) - 1e-3
        assert float(row["peak_mem_mb"]) >= float(row["start_rss_mb"]) > 0
    ratio = float(zero1["images_per_s_total"]) / float(ddp["images_per_s_total"])
    assert float(zero1["ratio_vs_ddp"]) == pytest.approx(ratio, abs=1e-3)
    assert zero1["within_5pct_of_ddp"] == ("yes" if float(zero1["ratio_vs_ddp"]) >= 0.95 else "no")
    # the timed step is the real fine-tuning step: rank 0's first loss equals a plain forward here
    torch.manual_seed(0)
    objective = FinetuneObjective(create_backbone("resnet18", img_size=(64, 32)), 751)
    with torch.no_grad():
        expected = float(objective(bench.make_batches(specs[0], 0, torch.device("cpu"))[0]).loss)
    assert float(ddp["loss_step0"]) == pytest.approx(expected, abs=1e-5)
    assert float(zero1["loss_step0"]) == pytest.approx(expected, abs=1e-5)
    assert float(zero1["max_loss_diff_vs_ddp"]) < 1e-4  # same AdamW step: the loss curves agree
    path = append_rows(tmp_path / "train.csv", rows, {key: "x" for key in PROVENANCE_COLUMNS})
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert [row["case"] for row in read] == ["ddp", "zero1", "zero4"] and read[2]["status"] == zero4["status"]


def test_last_error_skips_torchrun_summary() -> None:
    log = (
        "[rank1]: Traceback (most recent call last):\n"
        "[rank1]: ValueError: train.zero_stage must be 0, 1, 2 or 3, got 4\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "=====\nbench_train.py FAILED\n"
    )
    assert bench.last_error(log) == "ValueError: train.zero_stage must be 0; 1; 2 or 3; got 4"
    assert bench.last_error("killed\n\n") == "killed" and bench.last_error("") == "no output"
