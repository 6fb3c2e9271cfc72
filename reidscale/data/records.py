"""The typed hand-off between manifests and decoders: one person crop per record.

A record points either at a box inside a video frame (``frame >= 0``) or at an image file (``frame == -1``,
the box then selects a region of the image, or the whole image when its width or height is 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

WHOLE_IMAGE: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True)
class CropRecord:
    """One person crop.

    source:   video file or image file (absolute path), or an image stored in an LMDB as
              "<lmdb folder>::<key>" (``reidscale.data.image_bytes``)
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


@dataclass(frozen=True)
class SkippedRecord:
    """One skipped item: the ``file`` it came from, where in that file (``record``) and the skip ``reason``.

    ``record`` is the 1-based line of a text file (a tracklet file), the 0-based index of a JSON entry or of
    a saved manifest's record, the 0-based position in the records a decoder was given, or −1 when the
    whole file is skipped (a video that cannot be opened, an image whose name does not parse).
    """

    file: str
    record: int
    reason: str

    def as_dict(self) -> dict[str, str | int]:
        """``{"file": ..., "record": ..., "reason": ...}`` (one line of a ``skipped.jsonl``)."""
        return {"file": self.file, "record": self.record, "reason": self.reason}

    @classmethod
    def from_dict(cls, row: Any) -> SkippedRecord:
        """The entry ``as_dict`` wrote; ValueError saying what was expected when ``row`` is not one."""
        try:
            return cls(str(row["file"]), int(row["record"]), str(row["reason"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a skipped entry {{file, record, reason}} ({err!r}): {row!r}") from err


@dataclass
class Manifest:
    """Records plus what reading them skipped: reason → count in ``skipped`` (repairs such as a clipped box
    included) and, for every item left out, which one in ``skipped_entries``; a long job reports both."""

    name: str
    records: list[CropRecord]
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_entries: list[SkippedRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_pids(self) -> int:
        return len({record.pid for record in self.records})

    def count_skip(self, reason: str, count: int = 1) -> None:
        """Record that ``count`` items were skipped (or repaired) for ``reason``."""
        self.skipped[reason] = self.skipped.get(reason, 0) + count

    def skip(self, reason: str, file: str | os.PathLike, record: int = -1) -> None:
        """Record that item ``record`` of ``file`` was left out for ``reason`` (counted and listed)."""
        self.count_skip(reason)
        self.skipped_entries.append(SkippedRecord(os.fspath(file), int(record), reason))
