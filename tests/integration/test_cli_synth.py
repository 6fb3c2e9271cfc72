"""`reidscale synth`: builds the documented corpus layout and refuses to overwrite a foreign folder."""

from __future__ import annotations

import json
from pathlib import Path

from reidscale.cli import main


def test_synth_tiny_builds_the_documented_layout(tmp_path: Path, capsys) -> None:
    out = tmp_path / "corpus"
    assert main(["synth", "--out", str(out), "--scale", "tiny", "--seed", "1", "--codec", "mjpeg"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "corpus.json").read_text())
    videos = sorted(p.stem for p in (out / "videos").glob("*.avi"))
    assert videos and videos == sorted(p.stem for p in (out / "tracklets").glob("*.txt"))
    assert (out / "ground_truth.csv").read_text().startswith("video,track_id,identity,first_frame,last_frame")
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        assert any((out / "market" / split).glob("*.jpg")), split
    assert meta["seed"] == 1 and meta["codec"] == "mjpeg"
    assert f"{len(videos)} videos" in printed and "tiny corpus (seed 1, mjpeg)" in printed


def test_synth_refuses_a_non_empty_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["synth", "--out", str(tmp_path), "--scale", "tiny"]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
