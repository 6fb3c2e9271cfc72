"""Probe videos (demux only, no decoding) and turn crop records into per-video decoding plans.

Frame numbering (shared by every path): frame ``i`` is the ``i``-th frame in presentation order, i.e.
the packet with the ``i``-th smallest presentation timestamp of the first video stream. This is what
DALI's frame index counts as well, and it is robust to B-frames and variable frame rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reidscale.data.decode.geometry import Box, clip_box
from reidscale.data.decode.stats import (
    BOX_OUTSIDE_FRAME,
    MISSING_FRAME,
    NOT_A_VIDEO_RECORD,
    UNREADABLE_VIDEO,
    DecodeStats,
)
from reidscale.data.records import CropRecord


class VideoOpenError(RuntimeError):
    """A video file cannot be opened or holds no decodable video stream."""


@dataclass(frozen=True)
class VideoInfo:
    """What a decoder needs to know about one video before decoding it.

    frame_pts:    int64 [F] presentation timestamps in stream time base, ascending; frame i ↔ frame_pts[i]
    keyframe_pts: int64 [K] presentation timestamps of the keyframes, ascending
    """

    path: str
    codec: str
    width: int
    height: int
    frame_pts: np.ndarray
    keyframe_pts: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.frame_pts.shape[0])

    def keyframe_pts_before(self, frame: int) -> int:
        """Timestamp of the last keyframe at or before ``frame`` (where decoding ``frame`` must start)."""
        target = self.frame_pts[frame]
        position = int(np.searchsorted(self.keyframe_pts, target, side="right")) - 1
        return int(self.keyframe_pts[max(position, 0)])


def probe_video(path: str) -> VideoInfo:
    """Read the container and packet headers of ``path`` (no decoding); VideoOpenError names the file.

    A file cut short keeps the frames whose packets were read before the damage.
    """
    import av

    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as err:
        raise VideoOpenError(f"{path}: cannot open as a video container ({err})") from err
    with container:
        if not container.streams.video:
            raise VideoOpenError(f"{path}: the container has no video stream")
        stream = container.streams.video[0]
        codec, width, height = (
            stream.codec_context.name,
            stream.codec_context.width,
            stream.codec_context.height,
        )
        frame_pts, keyframe_pts = [], []
        try:
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue
                frame_pts.append(packet.pts)
                if packet.is_keyframe:
                    keyframe_pts.append(packet.pts)
        except av.error.FFmpegError:
            pass  # damaged tail: the packets read so far are the frames the file holds
    if not frame_pts or not keyframe_pts or width <= 0 or height <= 0:
        raise VideoOpenError(
            f"{path}: no decodable frames ({codec}, {width}x{height}, {len(frame_pts)} packets)"
        )
    return VideoInfo(
        path=path,
        codec=codec,
        width=width,
        height=height,
        frame_pts=np.unique(np.asarray(frame_pts, dtype=np.int64)),
        keyframe_pts=np.unique(np.asarray(keyframe_pts, dtype=np.int64)),
    )


@dataclass(frozen=True)
class CropTask:
    """One record ready to decode: its index in the input sequence, frame, and box clipped to the frame."""

    record_index: int
    frame: int
    box: Box


@dataclass(frozen=True)
class VideoPlan:
    """The crops wanted from one video, sorted by (frame, record index)."""

    video: VideoInfo
    tasks: tuple[CropTask, ...]

    @property
    def frames(self) -> np.ndarray:
        """int64 [U]: the distinct wanted frames, ascending."""
        return np.unique(np.fromiter((task.frame for task in self.tasks), dtype=np.int64))


def plan_video_crops(
    records: Sequence[CropRecord], stats: DecodeStats, video_cache: dict[str, VideoInfo] | None = None
) -> list[VideoPlan]:
    """Group ``records`` by video (first-appearance order), probe each video once, validate each record.

    Records that cannot be served are counted in ``stats.skipped`` (unreadable video, frame beyond the
    file, box outside the frame, image records) and left out of the plans. ``video_cache`` (path →
    VideoInfo) is reused and filled, so a loader probes each file once across epochs.
    """
    cache = {} if video_cache is None else video_cache
    by_video: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        if not record.is_video:
            stats.count_skip(NOT_A_VIDEO_RECORD)
            continue
        by_video.setdefault(record.source, []).append(index)
    plans = []
    for path, indices in by_video.items():
        if path not in cache:
            try:
                cache[path] = probe_video(path)
            except VideoOpenError:
                stats.count_skip(UNREADABLE_VIDEO, len(indices))
                continue
        video = cache[path]
        tasks = []
        for index in indices:
            record = records[index]
            if record.frame >= video.num_frames:
                stats.count_skip(MISSING_FRAME)
                continue
            box = clip_box(record.box, video.width, video.height)
            if box is None:
                stats.count_skip(BOX_OUTSIDE_FRAME)
                continue
            tasks.append(CropTask(index, record.frame, box))
        if tasks:
            tasks.sort(key=lambda task: (task.frame, task.record_index))
            plans.append(VideoPlan(video, tuple(tasks)))
    return plans
