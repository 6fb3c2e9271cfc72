"""``probe_video`` against what the test videos were written with: frame size, codec, frame count (header and
indexed), keyframes read back independently with PyAV's own demuxer, and the errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reidscale.data.video_probe import VideoInfo, VideoOpenError, probe_video
from tests.support.videos import GOP, HEIGHT, NUM_FRAMES, WIDTH, write_video

av = pytest.importorskip("av")  # PyAV is an optional dependency (the data extra)


def gray(frame: int) -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), 8 * frame, np.uint8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("probe_videos")
    paths = {"mjpeg": folder / "clip.avi", "h264": folder / "clip.mp4", "vp9": folder / "clip.webm"}
    for codec, path in paths.items():
        write_video(path, codec, gray)
    return paths


def demuxed_pts(path: Path) -> tuple[list[int], list[int]]:
    """(all frame pts, keyframe pts), ascending, straight from PyAV's demuxer."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.pts is not None and p.size > 0]
    return sorted(p.pts for p in packets), sorted(p.pts for p in packets if p.is_keyframe)


@pytest.mark.parametrize("codec", ["mjpeg", "h264", "vp9"])
def test_indexed_probe_matches_the_written_video(videos: dict[str, Path], codec: str) -> None:
    info = probe_video(videos[codec])
    frames, keyframes = demuxed_pts(videos[codec])
    assert (info.path, info.width, info.height, info.num_frames) == (
        str(videos[codec]),
        WIDTH,
        HEIGHT,
        NUM_FRAMES,
    )
    assert info.indexed and info.frame_pts.tolist() == frames and info.keyframe_pts.tolist() == keyframes
    assert info.codec == codec
    if codec != "mjpeg":  # a GOP of 8 frames: keyframes at 0, 8, 16, 24
        assert len(keyframes) == -(-NUM_FRAMES // GOP)
        for frame in range(NUM_FRAMES):
            assert info.keyframe_pts_before(frame) == max(k for k in keyframes if k <= frames[frame])


@pytest.mark.parametrize(("codec", "stored"), [("mjpeg", NUM_FRAMES), ("h264", NUM_FRAMES), ("vp9", None)])
def test_header_probe_reads_the_stored_count_only(videos: dict[str, Path], codec: str, stored) -> None:
    info = probe_video(videos[codec], index_frames=False)
    assert (info.width, info.height, info.num_frames, info.header_frames) == (WIDTH, HEIGHT, stored, stored)
    assert not info.indexed and info.frame_pts is None and info.keyframe_pts is None
    with pytest.raises(ValueError, match="index_frames=True"):
        info.keyframe_pts_before(0)
    indexed = probe_video(videos[codec])
    assert indexed.header_frames == stored and indexed.num_frames == NUM_FRAMES


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(b"not a video" * 50)
    for index_frames in (True, False):
        with pytest.raises(VideoOpenError, match=r"garbage\.avi: cannot open the video with PyAV"):
            probe_video(garbage, index_frames=index_frames)
    with pytest.raises(VideoOpenError, match=r"missing\.mp4"):
        probe_video(tmp_path / "missing.mp4")


def test_num_frames_prefers_the_index() -> None:
    pts = np.arange(0, 50, 10, dtype=np.int64)
    info = VideoInfo("v.mp4", "h264", 8, 4, header_frames=7, frame_pts=pts, keyframe_pts=pts[[0, 3]])
    assert info.num_frames == 5 and info.keyframe_pts_before(2) == 0 and info.keyframe_pts_before(4) == 30
    assert VideoInfo("v.mkv", "vp9", 8, 4).num_frames is None
