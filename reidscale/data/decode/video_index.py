"""Turn crop records into per-video decoding plans, probing each video once (``reidscale.data.video_probe``,
which also defines the frame numbering every decoding path shares).
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
from reidscale.data.video_probe import VideoInfo, VideoOpenError, probe_video


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
            stats.skip_records(NOT_A_VIDEO_RECORD, record.source, [index])
            continue
        by_video.setdefault(record.source, []).append(index)
    plans = []
    for path, indices in by_video.items():
        if path not in cache:
            try:
                cache[path] = probe_video(path)
            except VideoOpenError:
                stats.skip_records(UNREADABLE_VIDEO, path, indices)
                continue
        video = cache[path]
        tasks = []
        for index in indices:
            record = records[index]
            if record.frame >= video.num_frames:
                stats.skip_records(MISSING_FRAME, path, [index])
                continue
            box = clip_box(record.box, video.width, video.height)
            if box is None:
                stats.skip_records(BOX_OUTSIDE_FRAME, path, [index])
                continue
            tasks.append(CropTask(index, record.frame, box))
        if tasks:
            tasks.sort(key=lambda task: (task.frame, task.record_index))
            plans.append(VideoPlan(video, tuple(tasks)))
    return plans
