"""Manifest readers on tiny corpora built in tmp_path (real MJPEG videos, JPEGs, JSON, Market names).

Expected records are worked out by hand from the inputs written in each test.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidscale.data.manifests import (
    MANIFEST_KINDS,
    CorpusRoot,
    GroundTruthSegment,
    ManifestError,
    PathOutsideCorpusError,
    check_files_exist,
    format_skip_report,
    identity_at,
    load_manifest,
    read_cion_json,
    read_ground_truth,
    read_luperson_nl,
    read_market_manifest,
    read_saved_manifest,
    read_video_tracklets,
    save_manifest,
)
from reidscale.data.manifests.common import KEPT_REASONS
from reidscale.data.records import WHOLE_IMAGE, CropRecord, Manifest

av = pytest.importorskip("av")  # PyAV is an optional dependency (the data extra)

WIDTH, HEIGHT = 64, 48


def write_video(path: Path, num_frames: int) -> Path:
    """A real MJPEG video of ``num_frames`` WIDTH×HEIGHT frames, written with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuvj420p"
        for index in range(num_frames):
            pixels = np.full((HEIGHT, WIDTH, 3), 40 * index, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def named_skips(manifest: Manifest, root: Path) -> list[tuple[str, int, str]]:
    """The skipped items as (file relative to ``root``, record, reason), in the order skipped; checks that
    every reason but the kept repairs is listed once per counted item."""
    listed = Counter(entry.reason for entry in manifest.skipped_entries)
    assert listed == Counter({r: n for r, n in manifest.skipped.items() if r not in KEPT_REASONS})
    return [(os.path.relpath(e.file, root), e.record, e.reason) for e in manifest.skipped_entries]


def rows(manifest: Manifest) -> list[tuple[str, int, tuple[int, int, int, int], int, int, int]]:
    return [(r.video, r.frame, r.box, r.pid, r.camera, r.tracklet) for r in manifest.records]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """cam00_v000 (5 frames) tracks 10 and 9; cam01_v001 (4 frames) track 1; street (3 frames) track 3."""
    write_video(tmp_path / "videos/cam00_v000.avi", 5)
    write_video(tmp_path / "videos/cam01_v001.avi", 4)
    write_video(tmp_path / "videos/street.avi", 3)
    write_lines(
        tmp_path / "tracklets/cam00_v000.txt",
        ["1,10,10,10,20,30,1,-1,-1,-1", "2,10,12,10,20,30,1,-1,-1,-1", "3,9,60,40,10,10,1,-1,-1,-1", "",
         "1,9,0,0,8,16,0.9,-1,-1,-1"],
    )  # fmt: skip
    write_lines(tmp_path / "tracklets/cam01_v001.txt", ["4,1,1,2,3,4,1,-1,-1,-1", "2,1,2.5,6.6,10,9.5"])
    write_lines(tmp_path / "tracklets/street.txt", ["1,3,0,0,64,48,1,-1,-1,-1"])
    return tmp_path


def test_video_tracklets_records_by_hand(corpus: Path) -> None:
    manifest = read_video_tracklets(corpus)
    # tracklets in (video, numeric track id) order: (cam00,9)→0, (cam00,10)→1, (cam01,1)→2, (street,3)→3.
    # (60,40,10,10) leaves the 64×48 frame → clipped to (60,40,4,8);
    # 2.5,6.6,10,9.5 rounds half up to x 3..13 (2.5 → 3, 12.5 → 13), y 7..16 (6.6 → 7, 16.1 → 16).
    assert rows(manifest) == [
        ("cam00_v000", 0, (0, 0, 8, 16), 0, 0, 0),
        ("cam00_v000", 2, (60, 40, 4, 8), 0, 0, 0),
        ("cam00_v000", 0, (10, 10, 20, 30), 1, 0, 1),
        ("cam00_v000", 1, (12, 10, 20, 30), 1, 0, 1),
        ("cam01_v001", 1, (3, 7, 10, 9), 2, 1, 2),
        ("cam01_v001", 3, (1, 2, 3, 4), 2, 1, 2),
        ("street", 0, (0, 0, 64, 48), 3, -1, 3),
    ]
    assert manifest.records[0].source == str(corpus / "videos/cam00_v000.avi")
    assert all(record.is_video for record in manifest.records)
    assert manifest.skipped == {"box_clipped": 1}
    assert manifest.num_pids == 4


@pytest.mark.parametrize("videos_field", ["dict", "list"])
def test_corpus_json_cameras_win_over_the_name(corpus: Path, videos_field: str) -> None:
    table = {"cam00_v000": {"camera": 5, "order": 0}, "street": {"camera": 7}}
    videos = table if videos_field == "dict" else [{"video": name, **entry} for name, entry in table.items()]
    (corpus / "corpus.json").write_text(json.dumps({"seed": 0, "videos": videos}))
    cameras = {record.video: record.camera for record in read_video_tracklets(corpus).records}
    assert cameras == {"cam00_v000": 5, "cam01_v001": 1, "street": 7}


def test_corpus_json_bad_camera_is_named(corpus: Path) -> None:
    (corpus / "corpus.json").write_text(json.dumps({"videos": {"street": {"camera": "north"}}}))
    with pytest.raises(ManifestError, match=r"corpus\.json: videos\['street'\]\.camera = 'north'"):
        read_video_tracklets(corpus)


def test_frame_stride_and_min_box_size(corpus: Path) -> None:
    write_lines(corpus / "tracklets/street.txt", [f"{f},3,{f},0,{10 + f},20" for f in (3, 1, 2)])
    street = [r for r in read_video_tracklets(corpus, frame_stride=2).records if r.video == "street"]
    assert [(r.frame, r.box) for r in street] == [(0, (1, 0, 11, 20)), (2, (3, 0, 13, 20))]
    # min_box_size 5 drops (1,2,3,4) and the clipped (60,40,4,8) (counted as too small, not as clipped).
    manifest = read_video_tracklets(corpus, min_box_size=5)
    assert manifest.skipped == {"box_too_small": 2}
    assert sorted({(r.video, r.tracklet) for r in manifest.records}) == [
        ("cam00_v000", 0), ("cam00_v000", 1), ("cam01_v001", 2), ("street", 3)
    ]  # fmt: skip


def test_boxes_skipped_and_counted_in_both_modes(corpus: Path) -> None:
    lines = ["1,4,10,10,0,5", "2,4,70,10,5,5", "3,4,-5,-5,10,10", "4,4,-9,0,9,20", "5,4,30,20,10,10"]
    write_lines(corpus / "tracklets/street.txt", lines[:3])
    write_lines(corpus / "tracklets/cam00_v000.txt", lines)
    for strict in (True, False):
        manifest = read_video_tracklets(corpus, strict=strict)
        # empty (w=0), outside (x=70 ≥ 64), clipped (-5..5 → 0..5), outside (x -9..0), kept; street has 3.
        assert manifest.skipped == {"box_empty": 2, "box_outside": 3, "box_clipped": 2}
        # each skipped box is named by its tracklet file and line (the clipped ones are kept, not listed)
        assert sorted(named_skips(manifest, corpus)) == [
            ("tracklets/cam00_v000.txt", 1, "box_empty"),
            ("tracklets/cam00_v000.txt", 2, "box_outside"),
            ("tracklets/cam00_v000.txt", 4, "box_outside"),
            ("tracklets/street.txt", 1, "box_empty"),
            ("tracklets/street.txt", 2, "box_outside"),
        ]
        cam00 = [(r.frame, r.box) for r in manifest.records if r.video == "cam00_v000"]
        assert cam00 == [(2, (0, 0, 5, 5)), (4, (30, 20, 10, 10))]


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("1,2,3,4,5", r"5 column\(s\), expected at least 6"),
        ("a,2,3,4,5,6", r"frame 'a' is not an integer"),
        ("1,2.5,3,4,5,6", r"track_id '2.5' is not an integer"),
        ("0,2,3,4,5,6", r"frame 0 / track_id 2 out of range"),
        ("1,2,3,x,5,6", r"box \['3', 'x', '5', '6'\] is not numeric"),
        ("1,2,3,4,nan,6", r"box \['3', '4', 'nan', '6'\] is not finite"),
    ],
)
def test_malformed_line_names_file_and_line(corpus: Path, line: str, complaint: str) -> None:
    path = write_lines(corpus / "tracklets/street.txt", ["1,3,0,0,5,5", line])
    with pytest.raises(ManifestError, match=rf"{re.escape(str(path))}:2: {complaint}"):
        read_video_tracklets(corpus)


def test_frame_past_the_end_and_duplicate_box(corpus: Path) -> None:
    path = write_lines(corpus / "tracklets/street.txt", ["1,3,0,0,5,5", "4,3,0,0,5,5"])
    with pytest.raises(
        ManifestError, match=rf"{re.escape(str(path))}:2: frame 4 is past the end of the video \(3 frames\)"
    ):
        read_video_tracklets(corpus)
    write_lines(path, ["1,3,0,0,5,5", "2,3,0,0,5,5", "1,3,1,1,5,5"])
    with pytest.raises(
        ManifestError,
        match=rf"{re.escape(str(path))}:3: track 3 has a second box in frame 1 \(first on line 1\)",
    ):
        read_video_tracklets(corpus)
    # without probing the frame count is unknown: frame 4 of a 3-frame video is kept, boxes are not clipped.
    write_lines(path, ["4,3,60,40,10,10"])
    street = [r for r in read_video_tracklets(corpus, probe=False).records if r.video == "street"]
    assert [(r.frame, r.box) for r in street] == [(3, (60, 40, 10, 10))]


def test_matroska_has_no_frame_count_so_the_check_is_skipped(corpus: Path) -> None:
    (corpus / "videos/street.avi").unlink()
    write_video(corpus / "videos/street.mkv", 3)
    write_lines(corpus / "tracklets/street.txt", ["9,3,60,40,10,10"])
    street = [r for r in read_video_tracklets(corpus).records if r.video == "street"]
    assert [(r.frame, r.box, Path(r.source).name) for r in street] == [(8, (60, 40, 4, 8), "street.mkv")]


def test_corrupt_video_and_orphan_files(corpus: Path) -> None:
    (corpus / "videos/cam01_v001.avi").write_bytes(b"not a video" * 50)
    with pytest.raises(ManifestError, match=r"cam01_v001\.avi: cannot open the video with PyAV"):
        read_video_tracklets(corpus)
    write_lines(corpus / "tracklets/lost.txt", ["1,1,0,0,5,5"])
    write_video(corpus / "videos/silent.avi", 2)
    manifest = read_video_tracklets(corpus, strict=False)
    assert manifest.skipped == {
        "corrupt_video": 1, "tracklets_without_video": 1, "video_without_tracklets": 1, "box_clipped": 1
    }  # fmt: skip
    assert sorted(named_skips(manifest, corpus)) == [
        ("tracklets/lost.txt", -1, "tracklets_without_video"),
        ("videos/cam01_v001.avi", -1, "corrupt_video"),
        ("videos/silent.avi", -1, "video_without_tracklets"),
    ]
    assert [(r.video, r.pid) for r in manifest.records] == [("cam00_v000", 0)] * 2 + [
        ("cam00_v000", 1)
    ] * 2 + [("street", 2)]
    (corpus / "videos/cam01_v001.avi").unlink()
    (corpus / "tracklets/cam01_v001.txt").unlink()
    with pytest.raises(ManifestError, match=r"tracklets/lost\.txt: no video .*videos/lost\{\.mp4"):
        read_video_tracklets(corpus)


def test_non_strict_counts_every_bad_line_exactly(corpus: Path) -> None:
    lines = ["1,3,0,0,5,5", "x,3,0,0,5,5", "2,3", "1,3,2,2,5,5", "9,3,0,0,5,5", "2,3,1,1,5,5", "3,3,1,1,x,5"]
    write_lines(corpus / "tracklets/street.txt", lines)
    manifest = read_video_tracklets(corpus, strict=False)
    assert manifest.skipped == {"malformed_line": 3, "duplicate_box": 1, "frame_missing": 1, "box_clipped": 1}
    assert named_skips(manifest, corpus / "tracklets") == [
        ("street.txt", 2, "malformed_line"),
        ("street.txt", 3, "malformed_line"),
        ("street.txt", 4, "duplicate_box"),
        ("street.txt", 7, "malformed_line"),
        ("street.txt", 5, "frame_missing"),  # found once the video's frame count is known
    ]
    street = [(r.frame, r.box) for r in manifest.records if r.video == "street"]
    assert street == [(0, (0, 0, 5, 5)), (1, (1, 1, 5, 5))]


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"lacks videos/, tracklets/"):
        read_video_tracklets(tmp_path)
    write_video(tmp_path / "videos/a.avi", 2)
    (tmp_path / "tracklets").mkdir()
    with pytest.raises(ManifestError, match=r"holds no tracklet files"):
        read_video_tracklets(tmp_path)
    write_video(tmp_path / "videos/a.mkv", 2)
    write_lines(tmp_path / "tracklets/a.txt", ["1,1,0,0,5,5"])
    with pytest.raises(ManifestError, match=r"two files for video 'a': a\.avi and a\.mkv"):
        read_video_tracklets(tmp_path)
    with pytest.raises(ValueError, match=r"frame_stride must be an integer >= 1, got 0"):
        read_video_tracklets(tmp_path, frame_stride=0)


def test_ground_truth_segments_and_lookup(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "ground_truth.csv",
        ["video,track_id,identity,first_frame,last_frame", "cam00_v000,10,4,6,9", "cam00_v000,10,2,1,5",
         "cam01_v001,1,-1,1,3"],
    )  # fmt: skip
    truth = read_ground_truth(tmp_path)
    assert truth == {
        ("cam00_v000", 10): [GroundTruthSegment(0, 4, 2), GroundTruthSegment(5, 8, 4)],
        ("cam01_v001", 1): [GroundTruthSegment(0, 2, -1)],
    }
    lookups = [identity_at(truth, "cam00_v000", 10, frame) for frame in (0, 4, 5, 8, 9)]
    assert lookups == [2, 2, 4, 4, None]
    assert identity_at(truth, "cam01_v001", 2, 0) is None
    whole = write_lines(tmp_path / "gt_whole.csv", ["video,track_id,identity", "v,3,7"])
    assert read_ground_truth(whole) == {("v", 3): [GroundTruthSegment(0, None, 7)]}
    assert identity_at(read_ground_truth(whole), "v", 3, 10_000) == 7


@pytest.mark.parametrize(
    ("lines", "complaint"),
    [
        (["video,identity", "v,1"], r":1: header lacks \['track_id'\]"),
        (["video,track_id,identity,first_frame", "v,1,2,3"], r":1: header lacks \['last_frame'\]"),
        (["video,track_id,identity", "v,1,2", "v,x,2"], r":3: track_id 'x' is not an integer"),
        (["video,track_id,identity", "v,1,-2"], r":2: identity -2 is below -1"),
        (["video,track_id,identity,first_frame,last_frame", "v,1,2,5,4"], r":2: last_frame 4 is before"),
        (
            ["video,track_id,identity,first_frame,last_frame", "v,1,2,1,5", "v,1,3,5,8"],
            r": lines 2 and 3 give",
        ),
    ],
)
def test_ground_truth_errors_name_file_and_line(tmp_path: Path, lines: list[str], complaint: str) -> None:
    path = write_lines(tmp_path / "ground_truth.csv", lines)
    with pytest.raises(ManifestError, match=rf"{re.escape(str(path))}{complaint}"):
        read_ground_truth(tmp_path)


def write_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (200, 30, 30)).save(path)
    return path


def test_luperson_nl_relabels_tracklets_and_sorts_numerically(tmp_path: Path) -> None:
    for name in [
        "vid_b/3_10_0.jpg",
        "vid_b/3_2_1.jpg",
        "vid_a/7_5_0.jpg",
        "vid_a/1_1_0.jpg",
        "vid_a/1_1_2.jpg",
    ]:
        write_jpeg(tmp_path / name)
    (tmp_path / "vid_a/notes.txt").write_text("not an image")
    manifest = read_luperson_nl(tmp_path)
    got = [
        (Path(r.source).name, r.video, r.pid, r.tracklet, r.frame, r.box, r.camera) for r in manifest.records
    ]
    assert got == [
        ("1_1_0.jpg", "vid_a", 0, 0, -1, WHOLE_IMAGE, -1),
        ("1_1_2.jpg", "vid_a", 0, 0, -1, WHOLE_IMAGE, -1),
        ("7_5_0.jpg", "vid_a", 1, 1, -1, WHOLE_IMAGE, -1),
        ("3_2_1.jpg", "vid_b", 2, 2, -1, WHOLE_IMAGE, -1),
        ("3_10_0.jpg", "vid_b", 2, 2, -1, WHOLE_IMAGE, -1),
    ]
    write_jpeg(tmp_path / "vid_b/3_x_0.jpg")
    with pytest.raises(ManifestError, match=r"vid_b/3_x_0\.jpg: file name is not <pid>_<frame>_<obj>"):
        read_luperson_nl(tmp_path)
    write_jpeg(tmp_path / "stray.jpg")
    manifest = read_luperson_nl(tmp_path, strict=False)
    assert manifest.skipped == {"bad_name": 1, "misplaced_image": 1} and len(manifest) == 5
    assert named_skips(manifest, tmp_path) == [
        ("stray.jpg", -1, "misplaced_image"),
        ("vid_b/3_x_0.jpg", -1, "bad_name"),
    ]


def test_luperson_nl_country_city_video_tree(tmp_path: Path) -> None:
    """The released tree nests videos under country and city folders: each folder holding images is a
    video named by its path; the same video name in two cities is two videos."""
    for name in ["cn/beijing/v1/2_1_0.jpg", "cn/beijing/v1/2_3_0.jpg", "cn/shanghai/v1/2_1_0.jpg",
                 "us/boston/v7/0_4_1.jpg", "flat/1_1_0.jpg"]:  # fmt: skip
        write_jpeg(tmp_path / name)
    manifest = read_luperson_nl(tmp_path)
    got = [(r.video, r.pid, r.tracklet, Path(r.source).name) for r in manifest.records]
    assert got == [
        ("cn/beijing/v1", 0, 0, "2_1_0.jpg"),
        ("cn/beijing/v1", 0, 0, "2_3_0.jpg"),
        ("cn/shanghai/v1", 1, 1, "2_1_0.jpg"),
        ("flat", 2, 2, "1_1_0.jpg"),
        ("us/boston/v7", 3, 3, "0_4_1.jpg"),
    ]
    (tmp_path / "cn/beijing/loop").symlink_to(tmp_path / "cn", target_is_directory=True)  # no endless walk
    assert read_luperson_nl(tmp_path).records == manifest.records


def test_luperson_nl_without_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "vid_a").mkdir()
    with pytest.raises(ManifestError, match=r"holds no images; expected layout"):
        read_luperson_nl(tmp_path)


def test_cion_json_paths_ids_and_forms(tmp_path: Path) -> None:
    entries = [
        {"file_path": "b/2.jpg", "id": 105},
        {"file_path": "a/1.jpg", "id": "7", "camera": 3},
        {"file_path": str(tmp_path / "lists/abs/9.jpg"), "id": 105, "video": "v9"},
        {"file_path": "c/3.jpg", "id": 12},
    ]
    list_path = tmp_path / "lists/cion.json"
    list_path.parent.mkdir()
    list_path.write_text(json.dumps(entries))
    manifest = read_cion_json(list_path)
    # ids 7, 12, 105 → 0, 1, 2; sorted by (pid, path); relative paths sit beside the JSON.
    expected = [
        CropRecord(str(tmp_path / "lists/a/1.jpg"), -1, WHOLE_IMAGE, 0, 3),
        CropRecord(str(tmp_path / "lists/c/3.jpg"), -1, WHOLE_IMAGE, 1),
        CropRecord(str(tmp_path / "lists/abs/9.jpg"), -1, WHOLE_IMAGE, 2, -1, "v9"),
        CropRecord(str(tmp_path / "lists/b/2.jpg"), -1, WHOLE_IMAGE, 2),
    ]
    assert manifest.records == expected and manifest.skipped == {}
    list_path.write_text(json.dumps({"meta": 1, "images": entries}))
    # under image_root img/ the absolute lists/abs/9.jpg leaves the corpus root: skipped and counted.
    rooted = read_cion_json(list_path, image_root=tmp_path / "img", strict=False)
    assert rooted.skipped == {"path_outside": 1}
    assert [r.source for r in rooted.records][:2] == [
        str(tmp_path / "img/a/1.jpg"),
        str(tmp_path / "img/c/3.jpg"),
    ]


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"file_path": "a.jpg"}, r"entry 1 lacks key 'id'"),
        ({"file_path": "", "id": 1}, r"entry 1 key 'file_path' = '', expected a non-empty string"),
        ({"file_path": "a.jpg", "id": "p7"}, r"entry 1 key 'id' = 'p7', expected an integer"),
        ({"file_path": "a.jpg", "id": True}, r"entry 1 key 'id' = True"),
        ({"file_path": "a.jpg", "id": 1, "camera": -3}, r"entry 1 key 'camera' = -3"),
        (["a.jpg", 1], r"entry 1 is a list, expected an object"),
        ({"file_path": "z.jpg", "id": 2}, r"entry 1 key 'file_path' repeats .*z\.jpg"),
    ],
)
def test_cion_json_errors_name_entry_and_key(tmp_path: Path, entry: object, complaint: str) -> None:
    path = tmp_path / "cion.json"
    path.write_text(json.dumps([{"file_path": "z.jpg", "id": 1}, entry, {"file_path": "y.jpg", "id": 1}]))
    with pytest.raises(ManifestError, match=rf"{re.escape(str(path))}: {complaint}"):
        read_cion_json(path)
    manifest = read_cion_json(path, strict=False)
    assert len(manifest) == 2 and sum(manifest.skipped.values()) == 1
    assert [(file, record) for file, record, _ in named_skips(manifest, tmp_path)] == [("cion.json", 1)]


def test_cion_json_container_errors(tmp_path: Path) -> None:
    path = tmp_path / "cion.json"
    path.write_text(json.dumps({"entries": []}))
    with pytest.raises(ManifestError, match=r"under one of \('images', 'data'"):
        read_cion_json(path)
    path.write_text("[{")
    with pytest.raises(ManifestError, match=r"cion\.json: not valid JSON"):
        read_cion_json(path)


def make_market(root: Path) -> Path:
    splits = {
        "bounding_box_train": [
            "0015_c6s4_002202_01.jpg", "0002_c1s1_000451_03.jpg",
            "0002_c3s1_000551_02.jpg", "-1_c1s1_000401_03.jpg",
        ],
        "query": ["0002_c2s1_000301_00.jpg"],
        "bounding_box_test": ["0000_c3s1_000151_01.jpg", "0002_c1s1_000401_01.jpg", "-1_c2s1_000011_01.jpg"],
    }  # fmt: skip
    for folder, names in splits.items():
        for name in names:
            write_jpeg(root / folder / name)
    return root


def test_market_manifest_splits(tmp_path: Path) -> None:
    root = make_market(tmp_path / "market")
    train = read_market_manifest(root)
    assert [(Path(r.source).name, r.pid, r.camera, r.frame, r.box) for r in train.records] == [
        ("0002_c1s1_000451_03.jpg", 0, 0, -1, WHOLE_IMAGE),
        ("0002_c3s1_000551_02.jpg", 0, 2, -1, WHOLE_IMAGE),
        ("0015_c6s4_002202_01.jpg", 1, 5, -1, WHOLE_IMAGE),
    ]
    gallery = read_market_manifest(root, "gallery")
    assert [(Path(r.source).name, r.pid, r.camera) for r in gallery.records] == [
        ("0000_c3s1_000151_01.jpg", 0, 2), ("0002_c1s1_000401_01.jpg", 2, 0)
    ]  # fmt: skip
    assert read_market_manifest(root, "query", dataset="market1501").records == [
        CropRecord(str(root / "query/0002_c2s1_000301_00.jpg"), -1, WHOLE_IMAGE, 2, 1)
    ]
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'query', 'gallery'\)"):
        read_market_manifest(root, "test")


def test_load_manifest_dispatch_and_errors(corpus: Path, tmp_path: Path) -> None:
    assert load_manifest("video_tracklets", corpus, frame_stride=2) == read_video_tracklets(
        corpus, frame_stride=2
    )
    market = make_market(tmp_path / "market")
    assert load_manifest("market", market, split="gallery") == read_market_manifest(market, "gallery")
    with pytest.raises(
        ValueError, match=r"unknown manifest kind 'mot'; known kinds: video_tracklets, luperson"
    ):
        load_manifest("mot", corpus)
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['stride'\]; it takes strict, min_box"):
        load_manifest("video_tracklets", corpus, stride=2)
    assert MANIFEST_KINDS == (
        "video_tracklets",
        "luperson_nl",
        "luperson_nl_lmdb",
        "cion_al",
        "cion_json",
        "market",
        "saved",
    )


def test_skip_report_save_round_trip_and_missing_files(corpus: Path, tmp_path: Path) -> None:
    manifest = read_video_tracklets(corpus)
    manifest.count_skip("corrupt_video", 1234)
    assert format_skip_report(manifest) == (
        f"manifest video_tracklets:{corpus}: 7 records, 4 identities\n"
        "  repaired          1  box_clipped: boxes partly outside the frame, clipped to it (kept)\n"
        "  skipped      1,234  corrupt_video: videos that cannot be opened (their tracklets are skipped)"
    )
    assert (
        format_skip_report(Manifest("empty", []))
        == "manifest empty: 0 records, 0 identities\n  nothing skipped"
    )
    manifest.skip("bad_name", corpus / "videos/x.avi", 3)  # the named skips travel with the saved file
    saved = save_manifest(manifest, tmp_path / "cache/manifest.json")
    assert load_manifest("saved", saved) == manifest and len(manifest.skipped_entries) == 1
    payload = json.loads(saved.read_text())
    saved.write_text(json.dumps({**payload, "skipped_entries": [{"file": "a", "reason": "r"}]}))
    with pytest.raises(ManifestError, match=r"manifest\.json: skipped_entries\[0\] is not a skipped entry"):
        read_saved_manifest(saved)
    saved = save_manifest(manifest, tmp_path / "cache/manifest.json")
    assert check_files_exist(manifest) == []
    (corpus / "videos/street.avi").unlink()
    assert check_files_exist(manifest) == [str(corpus / "videos/street.avi")]
    sampled = [check_files_exist(manifest, sample=1, seed=seed) for seed in range(20)]
    assert (
        all(len(found) <= 1 for found in sampled)
        and [] in sampled
        and [str(corpus / "videos/street.avi")] in sampled
    )
    saved.write_text(json.dumps({"format": "reidscale-manifest-v1", "records": [["a", "b"]]}))
    with pytest.raises(ManifestError, match=r"manifest\.json: record 0 is malformed"):
        read_saved_manifest(saved)


def test_reads_a_tiny_synthetic_corpus_without_loss(tmp_path: Path) -> None:
    """The synthetic corpus (reidscale.data.synth) writes boxes inside the frame on existing frames: every
    MOT line becomes one record, nothing is skipped, and the ground truth covers every record."""
    synth = pytest.importorskip("reidscale.data.synth")
    if not hasattr(synth, "build_corpus"):
        pytest.skip("reidscale.data.synth.build_corpus is not available yet")
    synth.build_corpus(tmp_path / "corpus", scale="tiny", seed=0, codec="mjpeg")
    manifest = read_video_tracklets(tmp_path / "corpus")
    mot_keys = [
        (path.stem, int(line.split(",")[1]))
        for path in sorted((tmp_path / "corpus/tracklets").glob("*.txt"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    assert len(manifest) == len(mot_keys) and manifest.skipped == {}
    keys = sorted(set(mot_keys))
    assert sorted({r.tracklet for r in manifest.records}) == list(range(len(keys)))
    truth = read_ground_truth(tmp_path / "corpus")
    for record in manifest.records:
        video, track_id = keys[record.tracklet]
        assert record.video == video and record.camera == int(video[3:5])
        assert identity_at(truth, video, track_id, record.frame) is not None


# --- containment: every file a manifest names stays inside its corpus root ---------------------------------

ESCAPES = {
    "dotdot": "nested/../../outside/x.jpg",
    "absolute": "<outside>/x.jpg",
    "home": "~/x.jpg",
    "symlink_file": "leak.jpg",
    "symlink_folder": "leak_dir/x.jpg",
}


@pytest.fixture
def contained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/corpus with nested/deep/1.jpg, an inside symlink inner.jpg → it, and links leaving the corpus
    (leak.jpg → outside/x.jpg, leak_dir → outside/); HOME is tmp_path/home, outside the corpus too."""
    corpus = tmp_path / "corpus"
    write_jpeg(corpus / "nested/deep/1.jpg")
    (corpus / "inner.jpg").symlink_to(corpus / "nested/deep/1.jpg")
    write_jpeg(tmp_path / "outside/x.jpg")
    write_jpeg(tmp_path / "home/x.jpg")
    (corpus / "leak.jpg").symlink_to(tmp_path / "outside/x.jpg")
    (corpus / "leak_dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return corpus


def escape_entry(kind: str, corpus: Path) -> str:
    return ESCAPES[kind].replace("<outside>", str(corpus.parent / "outside"))


def outside_complaint(where: str, entry: str) -> str:
    return rf"{re.escape(where)}: file path {re.escape(repr(entry))} (leaves|resolves through a symlink to)"


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_cion_json_entry_leaving_the_corpus(contained: Path, kind: str) -> None:
    bad = escape_entry(kind, contained)
    path = contained / "list.json"
    entries = [{"file_path": "nested/deep/1.jpg", "id": 1}, {"file_path": bad, "id": 2}]
    path.write_text(json.dumps([*entries, {"file_path": "inner.jpg", "id": 3}]))
    with pytest.raises(ManifestError, match=outside_complaint(f"{path}: entry 1 key 'file_path'", bad)):
        read_cion_json(path)
    manifest = read_cion_json(path, strict=False)
    assert manifest.skipped == {"path_outside": 1}
    assert named_skips(manifest, contained) == [("list.json", 1, "path_outside")]
    # the inside symlink keeps its own name; nothing is resolved in the recorded sources.
    assert [r.source for r in manifest.records] == [
        str(contained / "nested/deep/1.jpg"),
        str(contained / "inner.jpg"),
    ]


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_saved_manifest_record_leaving_the_corpus(contained: Path, tmp_path: Path, kind: str) -> None:
    bad = escape_entry(kind, contained)
    sources = [str(contained / "nested/deep/1.jpg"), bad, str(contained / "inner.jpg")]
    records = [CropRecord(source, -1, WHOLE_IMAGE, pid) for pid, source in enumerate(sources)]
    saved = save_manifest(Manifest("m", records), tmp_path / "cache/m.json", corpus_root=contained)
    with pytest.raises(ManifestError, match=outside_complaint(f"{saved}: record 1", bad)):
        read_saved_manifest(saved)
    manifest = load_manifest("saved", saved, strict=False)
    assert manifest.skipped == {"path_outside": 1}
    assert named_skips(manifest, saved.parent) == [("m.json", 1, "path_outside")]
    assert manifest.records == [records[0], records[2]]


def test_saved_manifest_corpus_root(contained: Path, tmp_path: Path) -> None:
    records = [CropRecord(str(contained / "nested/deep/1.jpg"), -1, WHOLE_IMAGE, 0)]
    records.append(CropRecord(str(contained / "inner.jpg"), -1, WHOLE_IMAGE, 1))
    saved = save_manifest(Manifest("m", records), tmp_path / "m.json")
    # by default the deepest folder holding every source is recorded as the root.
    assert json.loads(saved.read_text())["corpus_root"] == str(contained)
    assert read_saved_manifest(saved).records == records
    # an explicit root wins over the recorded one: nested/ does not hold inner.jpg.
    with pytest.raises(ManifestError, match=r"record 1: file path '.*inner\.jpg' leaves the corpus root"):
        read_saved_manifest(saved, contained / "nested")
    # relative sources are joined to the root.
    relative = json.loads(saved.read_text())
    relative["records"][0][0] = "nested/deep/1.jpg"
    saved.write_text(json.dumps(relative))
    assert read_saved_manifest(saved).records == records
    del relative["corpus_root"]
    saved.write_text(json.dumps(relative))
    with pytest.raises(ManifestError, match=r"m\.json: records no corpus_root .* pass corpus_root="):
        read_saved_manifest(saved)
    assert read_saved_manifest(saved, contained).records == records


@pytest.mark.parametrize("linked", ["video", "tracklets"])
def test_video_tracklets_symlink_leaving_the_corpus(
    corpus: Path, tmp_path_factory: pytest.TempPathFactory, linked: str
) -> None:
    outside = tmp_path_factory.mktemp("outside")
    moved = {"video": "videos/street.avi", "tracklets": "tracklets/street.txt"}[linked]
    (corpus / moved).rename(outside / Path(moved).name)
    (corpus / moved).symlink_to(outside / Path(moved).name)
    with pytest.raises(ManifestError, match=outside_complaint(str(corpus), str(corpus / moved))):
        read_video_tracklets(corpus)
    manifest = read_video_tracklets(corpus, strict=False)
    assert manifest.skipped == {"path_outside": 1, "box_clipped": 1}
    assert {r.video for r in manifest.records} == {"cam00_v000", "cam01_v001"}


def test_video_tracklets_symlink_inside_the_corpus(corpus: Path) -> None:
    (corpus / "store").mkdir()
    (corpus / "videos/street.avi").rename(corpus / "store/street.avi")
    (corpus / "videos/street.avi").symlink_to(Path("../store/street.avi"))
    manifest = read_video_tracklets(corpus)
    assert manifest.skipped == {"box_clipped": 1}
    assert [r.source for r in manifest.records if r.video == "street"] == [str(corpus / "videos/street.avi")]


def test_luperson_nl_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write_jpeg(root / "vid_a/1_1_0.jpg")
    (root / "vid_a/1_2_0.jpg").symlink_to(root / "vid_a/1_1_0.jpg")  # inside: kept
    write_jpeg(tmp_path / "outside/vid_x/5_1_0.jpg")
    (root / "vid_a/2_1_0.jpg").symlink_to(tmp_path / "outside/vid_x/5_1_0.jpg")
    with pytest.raises(ManifestError, match=outside_complaint(str(root), str(root / "vid_a/2_1_0.jpg"))):
        read_luperson_nl(root)
    (root / "vid_x").symlink_to(tmp_path / "outside/vid_x", target_is_directory=True)
    manifest = read_luperson_nl(root, strict=False)
    assert manifest.skipped == {"path_outside": 2}
    assert [Path(r.source).name for r in manifest.records] == ["1_1_0.jpg", "1_2_0.jpg"]


def test_market_symlink_leaving_the_corpus(tmp_path: Path) -> None:
    root = make_market(tmp_path / "market")
    inside = root / "bounding_box_train/0015_c6s4_002202_01.jpg"
    inside.rename(root / "0015.jpg")
    inside.symlink_to(root / "0015.jpg")  # inside the root: kept under its own name
    assert str(inside) in [r.source for r in read_market_manifest(root).records]
    outside = write_jpeg(tmp_path / "elsewhere/0002_c2s1_000301_00.jpg")
    (root / "query/0002_c2s1_000301_00.jpg").unlink()
    (root / "query/0002_c2s1_000301_00.jpg").symlink_to(outside)
    with pytest.raises(ManifestError, match=r"market query split of .*market: file path .* resolves through"):
        read_market_manifest(root, "query")


def test_corpus_root_resolves_like_path_resolve(contained: Path) -> None:
    """CorpusRoot caches each folder's resolution; the paths it accepts and rejects match Path.resolve()."""
    root = CorpusRoot(contained)
    (contained / "chain.jpg").symlink_to(contained / "leak.jpg")  # a link to a link out
    (contained / "up").symlink_to(contained / "nested/deep", target_is_directory=True)
    names = [
        "nested/deep/1.jpg",
        "inner.jpg",
        "leak.jpg",
        "leak_dir/x.jpg",
        "chain.jpg",
        "up/1.jpg",
        "up/../x",
    ]
    for name in names:
        truth = (contained / name).resolve().is_relative_to(contained.resolve())
        lexical = Path(os.path.normpath(contained / name)).is_relative_to(contained)
        try:
            got = root.entry_path(name)
        except PathOutsideCorpusError:
            assert not (truth and lexical), name
        else:
            assert truth and lexical and got == os.path.normpath(contained / name), name
    assert root.entry_path("nested/../inner.jpg") == str(contained / "inner.jpg")
    with pytest.raises(PathOutsideCorpusError, match=r"file path '\.\.' leaves the corpus root .*\(as "):
        root.entry_path("..")
