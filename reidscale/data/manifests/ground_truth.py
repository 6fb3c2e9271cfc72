"""The true identities behind a video corpus's tracklets (``ground_truth.csv``), for measuring denoising.

Header ``video,track_id,identity[,first_frame,last_frame]``, one row per segment of a tracklet during which
its true identity is constant (an identity switch inside a tracklet gives two rows). Frames in the file are
1-based MOT frame numbers, inclusive; they are returned 0-based like ``CropRecord.frame``. Without the two
frame columns a row covers its whole tracklet. identity −1 marks a non-person (false positive) tracklet.
The file is always read strictly: evaluation against a silently truncated truth would be wrong.
"""

from __future__ import annotations

import csv
import itertools
import os
from dataclasses import dataclass

from .common import ManifestError, absolute_path

GROUND_TRUTH_FILE = "ground_truth.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("video", "track_id", "identity")
FRAME_COLUMNS: tuple[str, ...] = ("first_frame", "last_frame")


@dataclass(frozen=True)
class GroundTruthSegment:
    """Frames ``first_frame..last_frame`` (0-based, inclusive; last None = to the end) show ``identity``."""

    first_frame: int
    last_frame: int | None
    identity: int

    def covers(self, frame: int) -> bool:
        return self.first_frame <= frame and (self.last_frame is None or frame <= self.last_frame)


GroundTruth = dict[tuple[str, int], list[GroundTruthSegment]]


def _int_field(row: dict[str, str], column: str, where: str, minimum: int) -> int:
    text = (row.get(column) or "").strip()
    try:
        value = int(text)
    except ValueError:
        raise ManifestError(f"{where}: {column} {text!r} is not an integer") from None
    if value < minimum:
        raise ManifestError(f"{where}: {column} {value} is below {minimum}")
    return value


def _parse_row(row: dict[str, str], where: str, has_frames: bool) -> tuple[str, int, GroundTruthSegment]:
    video = (row.get("video") or "").strip()
    if not video:
        raise ManifestError(f"{where}: video is empty")
    track_id = _int_field(row, "track_id", where, minimum=0)
    identity = _int_field(row, "identity", where, minimum=-1)
    if not has_frames:
        return video, track_id, GroundTruthSegment(0, None, identity)
    first = _int_field(row, "first_frame", where, minimum=1)
    last = _int_field(row, "last_frame", where, minimum=1)
    if last < first:
        raise ManifestError(f"{where}: last_frame {last} is before first_frame {first}")
    return video, track_id, GroundTruthSegment(first - 1, last - 1, identity)


def _check_no_overlap(
    path: str, segments: list[tuple[GroundTruthSegment, int]], key: tuple[str, int]
) -> None:
    ordered = sorted(segments, key=lambda item: item[0].first_frame)
    for (earlier, earlier_line), (later, later_line) in itertools.pairwise(ordered):
        if earlier.last_frame is None or later.first_frame <= earlier.last_frame:
            raise ManifestError(
                f"{path}: lines {earlier_line} and {later_line} give overlapping segments for video "
                f"{key[0]!r} track {key[1]}"
            )


def read_ground_truth(root: str | os.PathLike) -> GroundTruth:
    """(video, track_id) → its segments sorted by first frame; ``root`` is the corpus folder or the CSV.

    ManifestError naming the file and line for a missing column, a non-integer field, an inverted or
    overlapping segment.
    """
    path = absolute_path(root)
    if path.is_dir():
        path = path / GROUND_TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"ground truth {path} does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = columns
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        frame_columns = [name for name in FRAME_COLUMNS if name in columns]
        if len(frame_columns) == 1:
            missing += [name for name in FRAME_COLUMNS if name not in columns]
        if missing:
            expected = ",".join(REQUIRED_COLUMNS) + "[," + ",".join(FRAME_COLUMNS) + "]"
            raise ManifestError(f"{path}:1: header lacks {missing}; expected {expected}")
        collected: dict[tuple[str, int], list[tuple[GroundTruthSegment, int]]] = {}
        for row in reader:
            where = f"{path}:{reader.line_num}"
            video, track_id, segment = _parse_row(row, where, has_frames=bool(frame_columns))
            collected.setdefault((video, track_id), []).append((segment, reader.line_num))
    for key, segments in collected.items():
        _check_no_overlap(str(path), segments, key)
    return {
        key: sorted((segment for segment, _ in segments), key=lambda s: s.first_frame)
        for key, segments in sorted(collected.items())
    }


def identity_at(ground_truth: GroundTruth, video: str, track_id: int, frame: int) -> int | None:
    """The true identity of track ``track_id`` of ``video`` at 0-based ``frame``; None when not covered."""
    for segment in ground_truth.get((video, track_id), []):
        if segment.covers(frame):
            return segment.identity
    return None
