"""benchmarks/bench_data.py, input suite: a real (tiny) run whose rows say what was measured, and the
refusal of bad arguments."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import bench_data as bench


@pytest.mark.slow
def test_a_tiny_input_run_writes_one_row_per_stream_and_views(tmp_path: Path) -> None:
    output = tmp_path / "data.csv"
    paths = (
        "cache+torch,shards+torch,shards+dali-cpu"
        if bench.input_path_problem("shards+dali-cpu") is None
        else ("cache+torch,shards+torch")
    )
    bench.main(
        ["--suites", "input", "--input-paths", paths, "--input-views", "2,cion", "--frames", "6",
         "--batch", "8", "--threads", "1", "--step-steps", "1", "--step-model", "resnet18",
         "--workdir", str(tmp_path / "work"), "--output", str(output)]
    )  # fmt: skip
    rows = list(csv.DictReader(output.open()))
    assert [(row["path"], row["views"]) for row in rows] == [
        (path, views) for path in paths.split(",") for views in ("2", "cion-2+8")
    ]
    for row in rows:
        assert row["input"] == ("crop_cache" if row["path"] == "cache+torch" else "shards")
        assert float(row["source_crops_per_s"]) > 0 and row["frames_per_s"] == ""
        views = 2 if row["views"] == "2" else 10
        assert float(row["crops_per_s"]) == pytest.approx(views * float(row["source_crops_per_s"]), rel=0.01)
        wait = row["step_data_wait"]
        assert (wait == "") if row["views"] == "2" else 0 <= float(wait) < 1
    cache, shards = (int(rows[i]["disk_bytes_per_crop"]) for i in (0, 2))
    assert cache == pytest.approx(256 * 128 * 3, rel=0.01) and 0 < shards < cache / 4  # JPEG vs raw
    assert rows[0]["records"] == rows[2]["records"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--suites", "speed"], "--suites: unknown ['speed']"),
        (["--input-paths", "shards+nvjpeg"], "--input-paths: unknown ['shards+nvjpeg']"),
        (["--batch", "6"], "--batch must be a multiple of 4"),
    ],
)
def test_bad_arguments_are_refused(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    captured = capsys.readouterr()
    assert message in f"{exit_info.value.code}{captured.err}{captured.out}"
