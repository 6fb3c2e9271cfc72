"""Decoding + cropping: PyAV and DALI paths against known synthetic frames, each other, and numpy slicing.

The test videos are 96×64, 30 frames, written here with PyAV. Frame t at pixel (x, y) holds
R = 128 + 80·sin(2πx/32), G = 128 + 80·sin(2πy/32), B = 20 + 7t: smooth waves survive 4:2:0 chroma
subsampling and lossy coding to within a few grey levels, and a crop's content pins down its box (a
one-pixel shift changes R or G by 10 grey levels on average) and its frame (7 grey levels per frame).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from reidscale.data.decode import (
    DecodeStats,
    build_crop_loader,
    clip_box,
    crop_and_resize,
    crop_records_pyav,
    probe_video,
    shard_records,
)
from reidscale.data.decode.loader import crops_by_record
from reidscale.data.decode.sharding import assign_videos
from reidscale.data.records import CropRecord
from tests.support.videos import HEIGHT, NUM_FRAMES, WIDTH, write_codec_videos

BOXES = [(10, 5, 20, 40), (50, 20, 30, 30), (0, 0, 96, 64), (80, 50, 30, 30), (-6, 30, 20, 20)]
FRAMES = [0, 3, 9, 17, 29]
# Mean absolute error per channel of a crop against the exact synthetic content: lossy coding and 4:2:0
# chroma of the waves cost at most 4.7 grey levels (measured over all codecs, boxes and sizes here), while
# the same crop compared with the content one pixel off scores at least 9.4: 6.5 separates the two.
TRUTH_TOLERANCE = 6.5
# DALI CPU vs PyAV: both decode with libavcodec (the same YUV planes) and differ only in YUV→RGB conversion
# and chroma upsampling (measured at most 3.7 grey levels per channel here, at the waves' steepest parts).
PATH_TOLERANCE = 5.0


def truth_frame(frame: int) -> np.ndarray:
    """float64 [H, W, 3]: the exact pixel values the encoder was given for ``frame``."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    wave = 2 * np.pi / 32
    red, green = 128 + 80 * np.sin(wave * cols), 128 + 80 * np.sin(wave * rows)
    return np.stack([red, green, np.full_like(cols, 20 + 7 * frame)], axis=-1)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("videos")
    paths = write_codec_videos(folder, "clip", lambda frame: np.rint(truth_frame(frame)).astype(np.uint8))
    encoded = Path(paths["mjpeg"]).read_bytes()
    paths["garbage"] = str(folder / "garbage.avi")
    Path(paths["garbage"]).write_bytes(
        np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    )
    paths["truncated"] = str(folder / "truncated.avi")
    Path(paths["truncated"]).write_bytes(encoded[: len(encoded) // 2])
    return paths


def grid_records(path: str) -> list[CropRecord]:
    return [CropRecord(path, frame, box, pid=0) for frame in FRAMES for box in BOXES]


def decode_all_frames(path: str) -> list[np.ndarray]:
    """Independent reference: every frame of ``path`` decoded in order with plain PyAV."""
    import av

    with av.open(path) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_clip_box_hand_cases() -> None:
    assert clip_box((10, 5, 20, 40), 96, 64) == (10, 5, 20, 40)
    assert clip_box((-6, 30, 20, 20), 96, 64) == (0, 30, 14, 20)
    assert clip_box((80, 50, 30, 30), 96, 64) == (80, 50, 16, 14)
    assert clip_box((96, 0, 5, 5), 96, 64) is None
    assert clip_box((10, -20, 5, 20), 96, 64) is None


def test_crop_and_resize_hand_worked() -> None:
    ramp = np.array([[0, 12, 24, 36]], dtype=np.uint8)[:, :, None].repeat(2, axis=0)
    # Width 4 → 2: output centres map to input centres 0.5 and 2.5 → values 6 and 30.
    assert crop_and_resize(ramp, (0, 0, 4, 2), (2, 2))[0, :, 0].tolist() == [6, 30]
    # Same size: the exact pixels. Box x 1..3 → width 4: the full frame is sampled at centres 0.75, 1.25,
    # 1.75, 2.25 (pixels outside the box take part, as in DALI's warp_affine).
    assert np.array_equal(crop_and_resize(ramp, (1, 0, 2, 2), (2, 2)), ramp[:, 1:3])
    assert crop_and_resize(ramp, (1, 0, 2, 2), (2, 4))[0, :, 0].tolist() == [9, 15, 21, 27]
    # At the frame border samples clamp: centres −0.25 → 0 and 0.25 → 3 for box x 0..2 → width 4.
    assert crop_and_resize(ramp, (0, 0, 2, 2), (2, 4))[0, :, 0].tolist() == [0, 3, 9, 15]
    assert np.array_equal(crop_and_resize(ramp, (1, 0, 2, 1), None), ramp[:1, 1:3])
    with pytest.raises(ValueError, match="out_size"):
        crop_and_resize(ramp, (0, 0, 2, 2), (0, 4))


def assert_matches_truth(crop: np.ndarray, record: CropRecord, tolerance: float) -> None:
    """The crop equals the synthetic frame's box content, which identifies the frame and box position."""
    x, y, w, h = clip_box(record.box, WIDTH, HEIGHT)
    reference = crop_and_resize(truth_frame(record.frame), (x, y, w, h), crop.shape[:2])
    error = np.abs(crop.astype(np.float64) - reference).mean(axis=(0, 1))
    assert error.max() <= tolerance, f"{record}: mean abs error per channel {error}"
    assert round((crop[..., 2].mean() - 20) / 7) == record.frame


@pytest.mark.parametrize("codec", ["mjpeg", "vp9", "h264"])
def test_pyav_crops_match_boxes_and_frames(videos, codec) -> None:
    records = grid_records(videos[codec])
    stats = DecodeStats()
    crops = dict(crop_records_pyav(records, None, stats))
    assert sorted(crops) == list(range(len(records)))
    assert stats.crops == len(records) and stats.skipped == {}
    for index, record in enumerate(records):
        assert crops[index].shape[:2] == clip_box(record.box, WIDTH, HEIGHT)[:1:-1]
        assert_matches_truth(crops[index], record, TRUTH_TOLERANCE)


@pytest.mark.parametrize("codec", ["mjpeg", "vp9", "h264"])
def test_pyav_crops_equal_numpy_slices_of_decoded_frames(videos, codec) -> None:
    frames = decode_all_frames(videos[codec])
    records = grid_records(videos[codec])
    exact = dict(crop_records_pyav(records))
    resized = dict(crop_records_pyav(records, (24, 12)))
    for index, record in enumerate(records):
        x, y, w, h = clip_box(record.box, WIDTH, HEIGHT)
        assert np.array_equal(exact[index], frames[record.frame][y : y + h, x : x + w])
        assert np.array_equal(resized[index], crop_and_resize(frames[record.frame], (x, y, w, h), (24, 12)))


@pytest.mark.parametrize("codec", ["mjpeg", "vp9", "h264"])
def test_pyav_decodes_each_needed_frame_once_from_its_keyframe(videos, codec) -> None:
    import av

    with av.open(videos[codec]) as container:
        packets = [p for p in container.demux(video=0) if p.pts is not None]
    keyframes = sorted(rank for rank, p in enumerate(sorted(packets, key=lambda p: p.pts)) if p.is_keyframe)
    wanted = [3, 3, 5, 9, 17, 18, 29]
    expected, previous = 0, None
    for frame in sorted(set(wanted)):
        key = max(k for k in keyframes if k <= frame)
        # Decode forward from the previous frame unless a seek to the keyframe decodes fewer frames.
        forward = previous is not None and (key <= previous or frame - previous <= frame - key + 1)
        expected += frame - previous if forward else frame - key + 1
        previous = frame
    stats = DecodeStats()
    records = [CropRecord(videos[codec], frame, (10, 10, 8, 8), pid=0) for frame in wanted]
    assert len(list(crop_records_pyav(records, stats=stats))) == len(wanted)
    assert stats.decoded_frames == expected
    assert probe_video(videos[codec]).num_frames == NUM_FRAMES


def test_corrupt_and_invalid_records_are_skipped_and_counted(videos) -> None:
    records = [
        *[CropRecord(videos["garbage"], frame, (0, 0, 8, 8), pid=0) for frame in range(3)],
        *[CropRecord(videos["truncated"], frame, (0, 0, 8, 8), pid=0) for frame in range(NUM_FRAMES)],
        CropRecord(videos["mjpeg"], NUM_FRAMES + 5, (0, 0, 8, 8), pid=0),
        CropRecord(videos["mjpeg"], 2, (200, 0, 8, 8), pid=0),
        CropRecord(videos["mjpeg"], -1, (0, 0, 8, 8), pid=0),
        CropRecord(str(Path(videos["mjpeg"]).parent / "absent.mp4"), 0, (0, 0, 8, 8), pid=0),
        CropRecord(videos["mjpeg"], 4, (1, 2, 8, 8), pid=0),
    ]
    stats = DecodeStats()
    served = [index for index, _ in crop_records_pyav(records, (8, 8), stats)]
    assert served[-1] == len(records) - 1
    assert stats.skipped["unreadable_video"] == 3 + 1
    assert stats.skipped["box_outside_frame"] == 1 and stats.skipped["not_a_video_record"] == 1
    # The truncated file keeps its first frames; the rest are missing (or the cut frame fails to decode).
    truncated_served = sum(1 for index in served if 3 <= index < 3 + NUM_FRAMES)
    assert 5 <= truncated_served < NUM_FRAMES
    assert stats.num_skipped + stats.crops == len(records)
    assert "skipped" in stats.summary() and "unreadable_video: 4" in stats.summary()
    # Every record not served is named once, with its file; the hand-made bad ones with their reason.
    named = {entry.record: entry for entry in stats.skipped_records}
    assert len(named) == len(stats.skipped_records) == stats.num_skipped
    assert set(named) == set(range(len(records))) - set(served)
    assert all(entry.file == records[entry.record].source for entry in stats.skipped_records)
    last = len(records) - 1
    expected = {0: "unreadable_video", 1: "unreadable_video", 2: "unreadable_video"}
    expected |= {last - 4: "missing_frame", last - 3: "box_outside_frame", last - 2: "not_a_video_record"}
    expected |= {last - 1: "unreadable_video"}
    assert {index: named[index].reason for index in expected} == expected


def test_loader_batches_cover_every_record_once(videos) -> None:
    records = grid_records(videos["h264"]) + grid_records(videos["vp9"])
    loader = build_crop_loader(records, batch_size=7, out_size=(16, 8), backend="pyav")
    batches = list(loader)
    assert [len(indices) for indices, _ in batches] == [7] * 7 + [1]
    assert all(crops.shape[1:] == (16, 8, 3) and crops.dtype == torch.uint8 for _, crops in batches)
    assert sorted(torch.cat([indices for indices, _ in batches]).tolist()) == list(range(len(records)))
    dropped = build_crop_loader(records, batch_size=7, out_size=(16, 8), backend="pyav", drop_last=True)
    assert sum(len(indices) for indices, _ in dropped) == 49
    with pytest.raises(ValueError, match="backend"):
        build_crop_loader(records, 4, (16, 8), backend="opencv")
    with pytest.raises(ValueError, match="out_size"):
        build_crop_loader(records, 4, (16,), backend="pyav")


@pytest.mark.dali
@pytest.mark.parametrize("codec", ["mjpeg", "vp9"])
def test_dali_cpu_crops_match_pyav_and_truth(videos, codec) -> None:
    pytest.importorskip("nvidia.dali")
    records = grid_records(videos[codec])
    for out_size in [(32, 16), (20, 20)]:
        dali = build_crop_loader(records, 6, out_size, backend="dali", sequence_length=4, sequences_per_run=2)
        dali_crops = crops_by_record(dali)
        pyav_crops = dict(crop_records_pyav(records, out_size))
        assert sorted(dali_crops) == list(range(len(records))) and dali.stats.skipped == {}
        for index, record in enumerate(records):
            difference = np.abs(dali_crops[index].astype(np.float64) - pyav_crops[index]).mean(axis=(0, 1))
            assert difference.max() <= PATH_TOLERANCE, f"{record}: DALI vs PyAV per channel {difference}"
            assert_matches_truth(dali_crops[index], record, TRUTH_TOLERANCE)


@pytest.mark.dali
def test_dali_decodes_each_video_once_front_to_back(videos) -> None:
    """Whatever the boxes and their order, a video is streamed once from its first frame to the run that
    holds its last wanted frame: decoded frames = that run's end, never a decode from the start per box."""
    pytest.importorskip("nvidia.dali")
    from reidscale.data.decode.dali_pipeline import crop_records_dali

    box = (0, 0, 8, 8)
    for frames, decoded in (
        ([3], 4),
        ([0, 1, 2, 3], 4),
        ([6, 2, 5, 2, 1], 8),
        ([9, 0, 9, 4, 8], 12),
        ([NUM_FRAMES - 1, 0], NUM_FRAMES),
    ):
        records = [CropRecord(videos["mjpeg"], frame, box, pid=0) for frame in frames]
        stats = DecodeStats()
        served = list(crop_records_dali(records, (8, 8), sequence_length=2, sequences_per_run=2, stats=stats))
        indices = sorted(int(i) for batch, _ in served for i in batch)
        assert indices == list(range(len(frames))) and stats.decoded_frames == decoded, (frames, stats)


def test_auto_on_the_cpu_decodes_every_codec_with_pyav(videos) -> None:
    """Measured on long clips, PyAV beats DALI's CPU decoder for every codec, so ``auto`` on the CPU routes
    every record to PyAV (without even probing the files)."""
    from reidscale.data.decode.loader import AUTO_DALI_CODECS, CropLoader

    records = [*grid_records(videos["mjpeg"])[:3], *grid_records(videos["h264"])[:3]]
    loader = CropLoader(records, 4, (16, 8), "auto", "cpu", False, {})
    assert AUTO_DALI_CODECS["cpu"] == frozenset() and loader._route() == ([], list(range(6)))
    assert loader.video_cache == {}


@pytest.mark.dali
def test_dali_auto_routes_h264_and_damaged_files_to_pyav(videos, monkeypatch) -> None:
    """With DALI's CPU codecs routed to DALI (as ``auto`` does on a GPU for its codecs), the other codecs
    and the records of a DALI batch that fails still reach PyAV."""
    pytest.importorskip("nvidia.dali")
    from reidscale.data.decode import loader as loader_module
    from reidscale.data.decode.dali_pipeline import DALI_CPU_CODECS

    monkeypatch.setitem(loader_module.AUTO_DALI_CODECS, "cpu", DALI_CPU_CODECS)
    records = [
        *grid_records(videos["mjpeg"])[:6],
        *grid_records(videos["h264"])[:6],
        *[CropRecord(videos["truncated"], frame, (0, 0, 8, 8), pid=0) for frame in range(NUM_FRAMES)],
        CropRecord(videos["garbage"], 0, (0, 0, 8, 8), pid=0),
    ]
    only_dali = build_crop_loader(records, 5, (16, 8), backend="dali", sequence_length=4, sequences_per_run=1)
    dali_served = crops_by_record(only_dali)
    assert not set(range(6, 12)) & set(dali_served)
    assert only_dali.stats.skipped["unsupported_codec"] == 6
    assert only_dali.stats.skipped["unreadable_video"] == 1
    auto = build_crop_loader(records, 5, (16, 8), backend="auto", sequence_length=4, sequences_per_run=1)
    auto_served = crops_by_record(auto)
    pyav_served = dict(crop_records_pyav(records, (16, 8)))
    assert set(auto_served) == set(pyav_served) >= set(range(12))
    assert auto.stats.crops == len(auto_served)
    assert auto.stats.crops + auto.stats.num_skipped == len(records)
    # each decoder numbers its skips within the records routed to it; the loader maps them back, so every
    # skipped record is named by its position in ``records`` and its own file
    for loader, served in ((only_dali, dali_served), (auto, auto_served)):
        named = {entry.record: entry for entry in loader.stats.skipped_records}
        assert len(named) == loader.stats.num_skipped and set(named) == set(range(len(records))) - set(served)
        assert all(entry.file == records[index].source for index, entry in named.items())
    unsupported = [e.record for e in only_dali.stats.skipped_records if e.reason == "unsupported_codec"]
    assert sorted(unsupported) == list(range(6, 12))


def video_records(num_videos: int, rng: np.random.Generator) -> list[CropRecord]:
    sizes = rng.integers(1, 12, size=num_videos)
    return [
        CropRecord(f"/data/video_{video:03d}.mp4", int(frame), (0, 0, 4, 4), pid=video)
        for video, size in enumerate(sizes)
        for frame in rng.permutation(50)[:size]
    ]


@pytest.mark.parametrize("by", ["video", "record"])
def test_sharding_partitions_deterministically_and_reshuffles_per_epoch(by) -> None:
    records = video_records(40, np.random.default_rng(3))
    world = 4
    shards = [
        shard_records(records, seed=7, epoch=0, rank=rank, world_size=world, by=by) for rank in range(world)
    ]
    flat = [position for shard in shards for position in shard]
    assert sorted(flat) == list(range(len(records)))  # disjoint and complete
    assert shards == [shard_records(records, 7, 0, rank, world, by) for rank in range(world)]
    assert shards != [shard_records(records, 7, 1, rank, world, by) for rank in range(world)]
    assert shards != [shard_records(records, 8, 0, rank, world, by) for rank in range(world)]
    sizes = [len(shard) for shard in shards]
    if by == "record":
        assert max(sizes) - min(sizes) <= 1
        return
    largest_video = max(sum(1 for r in records if r.source == s) for s in {r.source for r in records})
    assert max(sizes) - min(sizes) <= largest_video
    for shard in shards:
        videos = [records[position].source for position in shard]
        assert len({*videos}) == sum(1 for a, b in zip(["", *videos], videos, strict=False) if a != b)
        assert all(
            records[a].frame <= records[b].frame
            for a, b in itertools.pairwise(shard)
            if records[a].source == records[b].source
        )
    video_sets = [{records[p].source for p in shard} for shard in shards]
    assert all(not video_sets[i] & video_sets[j] for i in range(world) for j in range(i + 1, world))


def test_sharding_epochs_differ_statistically_and_validate_arguments(monkeypatch) -> None:
    owners = [assign_videos([1] * 20, 2, seed=0, epoch=epoch)[0] for epoch in range(50)]
    assert len({tuple(sorted(owned)) for owned in owners}) > 40  # C(20,10) = 184756 possible halves
    counts = np.zeros(20)
    for owned in owners:
        counts[owned] += 1
    assert np.all(np.abs(counts - 25) <= 15)  # each video on rank 0 about half the time (sd 3.5)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    records = video_records(6, np.random.default_rng(0))
    assert shard_records(records, 0, 0) == shard_records(records, 0, 0, rank=1, world_size=2)
    with pytest.raises(ValueError, match="rank must be in"):
        shard_records(records, 0, 0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="by must be one of"):
        shard_records(records, 0, 0, rank=0, world_size=2, by="camera")


@pytest.mark.gpu
@pytest.mark.dali
@pytest.mark.parametrize("codec", ["mjpeg", "vp9", "h264"])
def test_dali_gpu_crops_match_pyav(videos, codec) -> None:
    pytest.importorskip("nvidia.dali")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    records = grid_records(videos[codec])
    loader = build_crop_loader(records, 8, (32, 16), backend="dali", device="gpu", sequence_length=4)
    batches = list(loader)
    assert all(crops.is_cuda for _, crops in batches)
    gpu_crops = {
        int(i): c.cpu().numpy() for indices, crops in batches for i, c in zip(indices, crops, strict=True)
    }
    pyav_crops = dict(crop_records_pyav(records, (32, 16)))
    assert sorted(gpu_crops) == list(range(len(records))), loader.stats.summary()
    for index, record in enumerate(records):
        difference = np.abs(gpu_crops[index].astype(np.float64) - pyav_crops[index]).mean(axis=(0, 1))
        # NVDEC returns the same YUV planes as libavcodec; its YUV→RGB kernel differs (as on the CPU).
        assert difference.max() <= 1.5 * PATH_TOLERANCE, f"{record}: GPU vs PyAV per channel {difference}"
        assert_matches_truth(gpu_crops[index], record, 1.25 * TRUTH_TOLERANCE)
