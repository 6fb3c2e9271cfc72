"""MOT-challenge tracklet files, and the fit of their boxes to the probed video frame (``..video_probe``).

A line is ``frame,track_id,x,y,w,h[,conf,...]``: 1-based frame, integer track id >= 0, box in pixels
(integers or decimals; decimals are rounded half up to whole pixels: x0 = round(x), x1 = round(x + w), same
for y). Columns after the sixth are ignored; blank lines are skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..video_probe import VideoInfo
from .common import IssuePolicy

MOT_LINE_HELP = (
    "'frame,track_id,x,y,w,h[,conf,...]' with integer frame >= 1, integer track_id >= 0, numeric box"
)
MIN_MOT_COLUMNS = 6


@dataclass(frozen=True)
class TrackBox:
    """One parsed tracklet line: 1-based ``frame`` as in the file, box (x0, y0, x1, y1) in whole pixels."""

    frame: int
    track_id: int
    corners: tuple[int, int, int, int]
    line: int


def _half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not an integer") from None


def parse_mot_line(text: str) -> tuple[int, int, tuple[int, int, int, int]]:
    """(1-based frame, track id, (x0, y0, x1, y1)) of one line; ValueError saying what is wrong."""
    fields = [field.strip() for field in text.split(",")]
    if len(fields) < MIN_MOT_COLUMNS:
        raise ValueError(f"{len(fields)} column(s), expected at least {MIN_MOT_COLUMNS}")
    frame, track_id = _parse_int("frame", fields[0]), _parse_int("track_id", fields[1])
    if frame < 1 or track_id < 0:
        raise ValueError(f"frame {frame} / track_id {track_id} out of range (frame >= 1, track_id >= 0)")
    try:
        x, y, w, h = (float(value) for value in fields[2:6])
    except ValueError:
        raise ValueError(f"box {fields[2:6]} is not numeric") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"box {fields[2:6]} is not finite")
    return frame, track_id, (_half_up(x), _half_up(y), _half_up(x + w), _half_up(y + h))


def read_mot_file(path: Path, policy: IssuePolicy) -> list[TrackBox]:
    """The boxes of one MOT file in file order; malformed lines and duplicate (frame, track) boxes are
    errors naming ``path:line`` (strict) or skipped and counted."""
    boxes: list[TrackBox] = []
    seen: dict[tuple[int, int], int] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                frame, track_id, corners = parse_mot_line(text)
            except ValueError as err:
                message = f"{path}:{line_number}: {err}; expected {MOT_LINE_HELP}"
                policy.corrupt("malformed_line", message, file=path, record=line_number)
                continue
            first_line = seen.setdefault((frame, track_id), line_number)
            if first_line != line_number:
                message = f"{path}:{line_number}: track {track_id} has a second box in frame {frame}"
                message += f" (first on line {first_line})"
                policy.corrupt("duplicate_box", message, file=path, record=line_number)
                continue
            boxes.append(TrackBox(frame, track_id, corners, line_number))
    return boxes


def fit_box(
    box: TrackBox, path: Path, info: VideoInfo | None, min_box_size: int, policy: IssuePolicy
) -> tuple[int, int, int, int] | None:
    """The (x, y, w, h) box clipped to the frame, or None when it is skipped (named as ``path``:line).

    Empty boxes (w or h <= 0 after rounding) and boxes entirely outside the frame are skipped; boxes partly
    outside are clipped and counted as "box_clipped"; boxes whose clipped w or h is below ``min_box_size``
    are skipped. Without ``info`` (no probing) only the frame's top-left edge (0, 0) is known and used.
    """
    corners = box.corners
    x0, y0, x1, y1 = corners
    if x1 <= x0 or y1 <= y0:
        policy.filtered("box_empty", file=path, record=box.line)
        return None
    right, bottom = (info.width, info.height) if info is not None else (math.inf, math.inf)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, right), min(y1, bottom)
    if cx1 <= cx0 or cy1 <= cy0:
        policy.filtered("box_outside", file=path, record=box.line)
        return None
    width, height = int(cx1 - cx0), int(cy1 - cy0)
    if min(width, height) < min_box_size:
        policy.filtered("box_too_small", file=path, record=box.line)
        return None
    if (cx0, cy0, cx1, cy1) != corners:
        policy.repaired("box_clipped")
    return (cx0, cy0, width, height)
