"""CPU decoding with PyAV (FFmpeg): every codec FFmpeg knows, H.264/HEVC included.

Each video is opened once; its wanted frames are visited in ascending order. To reach a frame the
reader either decodes forward from where it is or seeks to the last keyframe at or before the frame,
whichever decodes fewer frames (forward when it is inside the same GOP already, or when the gap is no
longer than the walk from the keyframe; e.g. consecutive MJPEG frames are never sought). So every frame is
decoded at most once per call and the file is never decoded from its start unless a frame needs it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from reidscale.data.decode.geometry import crop_and_resize
from reidscale.data.decode.stats import DECODE_ERROR, MISSING_FRAME, UNREADABLE_VIDEO, DecodeStats
from reidscale.data.decode.video_index import VideoPlan, plan_video_crops
from reidscale.data.records import CropRecord
from reidscale.data.video_probe import VideoInfo


class _FrameWalker:
    """Decodes the frames of one open video stream in ascending frame order, seeking only when it pays."""

    def __init__(self, container, stream, video: VideoInfo, stats: DecodeStats) -> None:
        self._container, self._stream, self._video, self._stats = container, stream, video, stats
        self._frames: Iterator | None = None
        self._last_pts: int | None = None
        self._pending = None  # a frame decoded past the last target, kept for the next one

    def _seek(self, keyframe_pts: int) -> None:
        self._container.seek(keyframe_pts, stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._last_pts, self._pending = None, None

    def restart(self) -> None:
        """Forget the decoding position (after a decoder error): the next frame starts with a seek."""
        self._frames, self._last_pts, self._pending = None, None, None

    def _forward_is_cheaper(self, index: int, keyframe_pts: int) -> bool:
        if self._last_pts is None or self._last_pts > self._video.frame_pts[index]:
            return False
        if keyframe_pts <= self._last_pts:
            return True
        last_index = int(np.searchsorted(self._video.frame_pts, self._last_pts))
        keyframe_index = int(np.searchsorted(self._video.frame_pts, keyframe_pts))
        return index - last_index <= index - keyframe_index + 1

    def frame(self, index: int) -> np.ndarray | None:
        """RGB uint8 [H, W, 3] of frame ``index``; None when the stream has no frame with its timestamp."""
        target_pts = int(self._video.frame_pts[index])
        keyframe_pts = self._video.keyframe_pts_before(index)
        if self._frames is None or not self._forward_is_cheaper(index, keyframe_pts):
            self._seek(keyframe_pts)
        while True:
            if self._pending is not None:
                decoded, self._pending = self._pending, None
            else:
                decoded = next(self._frames, None)
                if decoded is None:
                    return None
                self._stats.decoded_frames += 1
            if decoded.pts is None:
                continue
            self._last_pts = decoded.pts
            if decoded.pts == target_pts:
                return decoded.to_ndarray(format="rgb24")
            if decoded.pts > target_pts:
                self._pending = decoded
                return None


def _crops_of_video(
    plan: VideoPlan, out_size: tuple[int, int] | None, stats: DecodeStats
) -> Iterator[tuple[int, np.ndarray]]:
    import av

    try:
        container = av.open(plan.video.path)
    except (av.error.FFmpegError, OSError):
        stats.skip_records(UNREADABLE_VIDEO, plan.video.path, [task.record_index for task in plan.tasks])
        return
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        walker = _FrameWalker(container, stream, plan.video, stats)
        position = 0
        while position < len(plan.tasks):
            frame_index = plan.tasks[position].frame
            same_frame = [task for task in plan.tasks[position:] if task.frame == frame_index]
            position += len(same_frame)
            try:
                frame = walker.frame(frame_index)
            except av.error.FFmpegError:
                stats.skip_records(DECODE_ERROR, plan.video.path, [task.record_index for task in same_frame])
                walker.restart()
                continue
            if frame is None:
                stats.skip_records(MISSING_FRAME, plan.video.path, [task.record_index for task in same_frame])
                continue
            for task in same_frame:
                stats.crops += 1
                yield task.record_index, crop_and_resize(frame, task.box, out_size)


def crop_records_pyav(
    records: Sequence[CropRecord],
    out_size: tuple[int, int] | None = None,
    stats: DecodeStats | None = None,
    video_cache: dict[str, VideoInfo] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode the frames ``records`` need with PyAV and yield ``(record index, crop)`` per served record.

    records:  video records (``frame >= 0``); they are grouped by video and each needed frame is decoded
              once. Crops come out video by video (first-appearance order), by frame inside a video.
    out_size: (H, W) to resize every crop to (bilinear, see ``geometry``), or None for the box's exact
              pixels (box clipped to the frame).
    stats:    a DecodeStats to fill (decoded frames, crops, skipped records by reason); corrupt files,
              missing frames, decoder errors and boxes outside the frame are counted there, not raised.
    crop:     uint8 [H, W, 3] RGB.
    """
    stats = DecodeStats() if stats is None else stats
    for plan in plan_video_crops(records, stats, video_cache):
        yield from _crops_of_video(plan, out_size, stats)
