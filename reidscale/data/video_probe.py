"""What a video file holds, read without decoding: ``probe_video`` and its ``VideoInfo``.

Two depths, one record:

- ``index_frames=False`` (manifest validation): the container headers only, fast on any corpus size.
  ``num_frames`` is the count the header stores (MP4 and AVI store it; Matroska/WebM leave it 0, then it is
  None: counting by demuxing would read the whole file).
- ``index_frames=True`` (decoders): every packet header of the first video stream is read as well, giving
  the presentation timestamps of all frames and keyframes; ``num_frames`` is then the number of frames found.

Frame numbering (shared by every decoding path): frame ``i`` is the ``i``-th frame in presentation order,
i.e. the packet with the ``i``-th smallest presentation timestamp of the first video stream. This is what
DALI's frame index counts as well, and it is robust to B-frames and variable frame rates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


class VideoOpenError(RuntimeError):
    """A video file cannot be opened or holds no usable video stream; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """One video's first stream: size, codec and (when indexed) the timestamps of its frames.

    path:          the file probed
    codec:         decoder name of the stream (e.g. "h264", "mjpeg")
    width, height: frame size in pixels
    header_frames: frame count stored in the container header, None when it stores none
    frame_pts:     int64 [F] presentation timestamps in stream time base, ascending (frame i ↔ frame_pts[i]);
                   None when the packets were not indexed
    keyframe_pts:  int64 [K] presentation timestamps of the keyframes, ascending; None when not indexed
    """

    path: str
    codec: str
    width: int
    height: int
    header_frames: int | None = None
    frame_pts: np.ndarray | None = None
    keyframe_pts: np.ndarray | None = None

    @property
    def indexed(self) -> bool:
        """True when the frame and keyframe timestamps were read (``probe_video(index_frames=True)``)."""
        return self.frame_pts is not None and self.keyframe_pts is not None

    @property
    def num_frames(self) -> int | None:
        """Frames found by indexing, else the header's count (None when the header stores none)."""
        if self.frame_pts is not None:
            return int(self.frame_pts.shape[0])
        return self.header_frames

    def keyframe_pts_before(self, frame: int) -> int:
        """Timestamp of the last keyframe at or before ``frame`` (where decoding ``frame`` must start)."""
        if self.frame_pts is None or self.keyframe_pts is None:
            raise ValueError(f"{self.path}: probed without index_frames=True, so keyframes are unknown")
        target = self.frame_pts[frame]
        position = int(np.searchsorted(self.keyframe_pts, target, side="right")) - 1
        return int(self.keyframe_pts[max(position, 0)])


def probe_video(path: str | os.PathLike, *, index_frames: bool = True) -> VideoInfo:
    """Read the headers of ``path`` (no decoding); ``index_frames`` also reads every packet header.

    VideoOpenError naming the file when PyAV cannot open it, it holds no video stream, its stream has no
    frame size, or (indexed) no frame could be read. A file cut short keeps the frames whose packets were
    read before the damage.
    """
    import av

    name = os.fspath(path)
    try:
        container = av.open(name)
    except (av.error.FFmpegError, OSError) as err:
        raise VideoOpenError(f"{name}: cannot open the video with PyAV ({err})") from err
    with container:
        if not container.streams.video:
            raise VideoOpenError(f"{name}: holds no video stream")
        stream = container.streams.video[0]
        codec, width, height = (
            stream.codec_context.name,
            stream.codec_context.width,
            stream.codec_context.height,
        )
        stored = stream.frames
        frame_pts: list[int] = []
        keyframe_pts: list[int] = []
        if index_frames:
            try:
                for packet in container.demux(stream):
                    if packet.pts is None or packet.size == 0:
                        continue
                    frame_pts.append(packet.pts)
                    if packet.is_keyframe:
                        keyframe_pts.append(packet.pts)
            except av.error.FFmpegError:
                pass  # damaged tail: the packets read so far are the frames the file holds
    if width <= 0 or height <= 0:
        raise VideoOpenError(f"{name}: video stream has no frame size ({width}x{height})")
    header_frames = stored if stored > 0 else None
    if not index_frames:
        return VideoInfo(path=name, codec=codec, width=width, height=height, header_frames=header_frames)
    if not frame_pts or not keyframe_pts:
        raise VideoOpenError(
            f"{name}: no decodable frames ({codec}, {width}x{height}, {len(frame_pts)} packets)"
        )
    return VideoInfo(
        path=name,
        codec=codec,
        width=width,
        height=height,
        header_frames=header_frames,
        frame_pts=np.unique(np.asarray(frame_pts, dtype=np.int64)),
        keyframe_pts=np.unique(np.asarray(keyframe_pts, dtype=np.int64)),
    )
