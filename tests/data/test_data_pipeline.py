"""A tiny synthetic corpus end to end through the CPU paths: synth → manifest → decode (PyAV, DALI CPU).

Crops are checked against the boxes of the MOT files: the PyAV path must equal a numpy slice of frames
decoded independently with a plain PyAV loop, and the DALI CPU path must agree with PyAV within the pixel
tolerance stated below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reidscale.data.decode import DecodeStats, crop_records_pyav
from reidscale.data.manifests import load_manifest, read_ground_truth
from reidscale.data.synth import build_corpus

av = pytest.importorskip("av")  # PyAV is an optional dependency (the data extra)

#: DALI-CPU and PyAV both decode with FFmpeg's decoders and differ only in the YUV→RGB conversion and
#: the rounding of the resampling: a mean absolute difference of a few grey levels per crop.
DALI_PYAV_MEAN_ABS_TOLERANCE = 5.0


@pytest.fixture(scope="module", params=["mjpeg", "vp9"])
def corpus(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(f"corpus_{request.param}")
    build_corpus(out, scale="tiny", seed=3, codec=request.param)
    return out


def decode_all_frames(path: str) -> list[np.ndarray]:
    with av.open(path) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_manifest_covers_every_mot_line_and_ground_truth(corpus: Path) -> None:
    manifest = load_manifest("video_tracklets", corpus)
    mot_lines = sum(len(p.read_text().splitlines()) for p in (corpus / "tracklets").glob("*.txt"))
    assert len(manifest) == mot_lines and not manifest.skipped
    truth = read_ground_truth(corpus)
    assert len(truth) == manifest.num_pids  # one ground-truth entry per tracklet
    assert {video for video, _ in truth} == {record.video for record in manifest.records}


def test_pyav_crops_are_the_boxes_of_independently_decoded_frames(corpus: Path) -> None:
    records = load_manifest("video_tracklets", corpus).records
    frames = {source: decode_all_frames(source) for source in {r.source for r in records}}
    stats = DecodeStats()
    seen = 0
    for index, crop in crop_records_pyav(records, out_size=None, stats=stats):
        record = records[index]
        x, y, w, h = record.box
        expected = frames[record.source][record.frame][y : y + h, x : x + w]
        assert crop.shape == expected.shape and np.array_equal(crop, expected), record
        seen += 1
    assert seen == len(records) and stats.num_skipped == 0


def test_dali_cpu_crops_agree_with_pyav(corpus: Path) -> None:
    pytest.importorskip("nvidia.dali")
    from reidscale.data.decode import crop_records_dali

    records = load_manifest("video_tracklets", corpus).records[::5]
    out_size = (64, 32)
    pyav_crops = dict(crop_records_pyav(records, out_size=out_size))
    dali_crops: dict[int, np.ndarray] = {}
    for indices, crops in crop_records_dali(records, out_size, device="cpu"):
        for index, crop in zip(indices.tolist(), crops.cpu().numpy(), strict=True):
            dali_crops[index] = crop
    assert sorted(dali_crops) == sorted(pyav_crops) == list(range(len(records)))
    differences = [
        np.abs(dali_crops[i].astype(np.float64) - pyav_crops[i].astype(np.float64)).mean() for i in dali_crops
    ]
    assert max(differences) <= DALI_PYAV_MEAN_ABS_TOLERANCE, max(differences)
