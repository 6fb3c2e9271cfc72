"""benchmarks/bench_long_video.py: a real (short) run whose rows say what was measured, the clip it writes
and the refusal of bad arguments."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import bench_long_video as bench
from reidscale.data.video_probe import probe_video


def test_the_clip_has_the_frames_and_keyframes_asked_for(tmp_path: Path) -> None:
    info = probe_video(bench.write_clip(tmp_path / "clip.avi", "mjpeg", 120))
    assert info.num_frames == 120 and (info.height, info.width) == bench.FRAME_SIZE


def test_a_short_run_writes_one_row_per_runnable_path(tmp_path: Path) -> None:
    output = tmp_path / "long.csv"
    bench.main(["--codecs", "mjpeg", "--paths", "pyav", "--video-frames", "200", "--output", str(output)])
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 1
    row = rows[0]
    assert (row["path"], row["codec"], row["video_frames"], row["boxes"]) == ("pyav", "mjpeg", "200", "4")
    early, late = float(row["early_crops_per_s"]), float(row["late_crops_per_s"])
    assert early > 0 and late > 0
    assert float(row["late_over_early_time"]) == pytest.approx(early / late, rel=0.05)  # same box count
    assert row["whole_boxes"] == "40" and float(row["whole_crops_per_s"]) > 0
    assert row["commit"] and row["device"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--codecs", "av1"], "--codecs: unknown ['av1']"),
        (["--paths", "nvdec"], "--paths: unknown ['nvdec']"),
        (["--video-frames", "50"], "--video-frames must be >= 100"),
    ],
)
def test_bad_arguments_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as raised:
        bench.main(argv)
    assert message in capsys.readouterr().err + str(raised.value)
