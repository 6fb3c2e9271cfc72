"""The typed hand-off between manifests and decoders: one person crop per record.

A record points either at a box inside a video frame (``frame >= 0``) or at an image file (``frame == -1``,
the box then selects a region of the image, or the whole image when its width or height is 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

WHOLE_IMAGE: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True)
class CropRecord:
    """One person crop.

    source:   video file or image file (absolute path)
    frame:    0-based frame index in the video; -1 for an image file
    box:      (x, y, w, h) in pixels of the full frame / image; WHOLE_IMAGE = the whole image
    pid:      training label: identity after relabelling to 0..n-1 (or the tracklet index for raw tracklets)
    camera:   0-based camera id, -1 when unknown
    video:    video id (file stem) or group folder name, "" when none
    tracklet: corpus-wide tracklet index, -1 when unknown
    """

    source: str
    frame: int
    box: tuple[int, int, int, int]
    pid: int
    camera: int = -1
    video: str = ""
    tracklet: int = -1

    @property
    def is_video(self) -> bool:
        return self.frame >= 0


@dataclass
class Manifest:
    """Records plus what reading them skipped (reason → count), so a long job can report it at the end."""

    name: str
    records: list[CropRecord]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_pids(self) -> int:
        return len({record.pid for record in self.records})

    def count_skip(self, reason: str, count: int = 1) -> None:
        """Record that ``count`` items were skipped for ``reason``."""
        self.skipped[reason] = self.skipped.get(reason, 0) + count
