"""What every manifest reader shares: the strict / skip-and-count policy, relabelling, reports, saving.

Strictness: with ``strict=True`` (the default of every reader) the first corrupt item stops the read with a
ManifestError naming the file (and line or entry) and what was expected: right for small or new datasets,
where a bad line is a bug to fix. A long job passes ``strict=False``: corrupt items are skipped and counted
by reason in ``Manifest.skipped`` and ``format_skip_report`` prints the counts at the end. Repairs that keep
the item (a box clipped to the frame) and data-quality filters (tiny boxes) are counted in both modes.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Hashable, Iterable
from pathlib import Path

from ...utils.io import atomic_write_json
from ..records import CropRecord, Manifest

SAVED_MANIFEST_FORMAT = "reidscale-manifest-v1"

SKIP_REASONS: dict[str, str] = {
    "malformed_line": "tracklet lines that do not parse (too few columns, non-numeric fields)",
    "duplicate_box": "second box of the same track id in the same frame",
    "frame_missing": "boxes on a frame past the end of the video",
    "box_empty": "boxes with width or height <= 0",
    "box_outside": "boxes entirely outside the frame",
    "box_clipped": "boxes partly outside the frame, clipped to it (kept)",
    "box_too_small": "boxes smaller than min_box_size after clipping",
    "corrupt_video": "videos that cannot be opened (their tracklets are skipped)",
    "tracklets_without_video": "tracklet files without a matching video",
    "video_without_tracklets": "videos without a tracklet file (nothing to read)",
    "bad_name": "image files whose name does not parse",
    "misplaced_image": "images outside a video folder",
    "bad_entry": "JSON entries without a usable file path or id",
    "duplicate_path": "JSON entries repeating an earlier file path",
}
KEPT_REASONS: frozenset[str] = frozenset({"box_clipped"})


class ManifestError(ValueError):
    """Invalid manifest input; the message names the file (line or entry) and what was expected."""


class IssuePolicy:
    """Raise on a corrupt item (strict) or count it under ``reason`` in ``manifest.skipped``."""

    def __init__(self, manifest: Manifest, strict: bool) -> None:
        self.manifest = manifest
        self.strict = strict

    def corrupt(self, reason: str, message: str, count: int = 1) -> None:
        """Handle ``count`` corrupt items; ManifestError(message) in strict mode."""
        if self.strict:
            raise ManifestError(message)
        self.manifest.count_skip(reason, count)

    def count(self, reason: str, count: int = 1) -> None:
        """Count a repair or filtered item in both modes."""
        self.manifest.count_skip(reason, count)


def dense_labels(keys: Iterable[Hashable]) -> dict[Hashable, int]:
    """Map each distinct key to 0..n−1 in ascending key order."""
    return {key: label for label, key in enumerate(sorted(set(keys)))}


def absolute_path(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded, made absolute (not resolved: symlinked corpora keep their names)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def format_skip_report(manifest: Manifest) -> str:
    """The end-of-job summary: records, identities and every skip / repair count with what it means."""
    lines = [f"manifest {manifest.name}: {len(manifest):,} records, {manifest.num_pids:,} identities"]
    if not manifest.skipped:
        lines.append("  nothing skipped")
        return "\n".join(lines)
    for reason in sorted(manifest.skipped):
        meaning = SKIP_REASONS.get(reason, reason)
        verb = "repaired" if reason in KEPT_REASONS else "skipped"
        lines.append(f"  {verb} {manifest.skipped[reason]:>10,}  {reason}: {meaning}")
    return "\n".join(lines)


def check_files_exist(manifest: Manifest, sample: int | None = None, seed: int = 0) -> list[str]:
    """The sources of ``manifest`` that are not files, sorted; checks all or a random ``sample`` of them.

    Sampling draws ``sample`` distinct sources with ``random.Random(seed)`` (a cheap spot check of a
    10M-image manifest); ``sample`` must be positive.
    """
    sources = sorted({record.source for record in manifest.records})
    if sample is not None:
        if sample <= 0:
            raise ValueError(f"sample must be a positive number of files or None, got {sample}")
        if sample < len(sources):
            sources = sorted(random.Random(seed).sample(sources, sample))
    return [source for source in sources if not os.path.isfile(source)]


def save_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Write ``manifest`` (records and skip counts) to ``path`` as JSON, atomically.

    Reading a corpus of thousands of videos probes every file; saving the result lets later runs start at
    once with ``load_manifest("saved", path)``.
    """
    rows = [[r.source, r.frame, *r.box, r.pid, r.camera, r.video, r.tracklet] for r in manifest.records]
    payload = {
        "format": SAVED_MANIFEST_FORMAT,
        "name": manifest.name,
        "skipped": manifest.skipped,
        "columns": ["source", "frame", "x", "y", "w", "h", "pid", "camera", "video", "tracklet"],
        "records": rows,
    }
    return atomic_write_json(path, payload, indent=None)


def read_saved_manifest(path: str | os.PathLike) -> Manifest:
    """Read a file written by ``save_manifest``; ManifestError naming the file and record on bad content."""
    file_path = absolute_path(path)
    try:
        payload = json.loads(file_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ManifestError(f"{file_path}: not valid JSON ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != SAVED_MANIFEST_FORMAT:
        raise ManifestError(f"{file_path}: not a saved manifest (expected format {SAVED_MANIFEST_FORMAT!r})")
    records = []
    for index, row in enumerate(payload.get("records", [])):
        try:
            source, frame, x, y, w, h, pid, camera, video, tracklet = row
            record = CropRecord(
                str(source),
                int(frame),
                (int(x), int(y), int(w), int(h)),
                int(pid),
                int(camera),
                str(video),
                int(tracklet),
            )
        except (TypeError, ValueError) as err:
            raise ManifestError(f"{file_path}: record {index} is malformed ({err}): {row!r}") from err
        records.append(record)
    skipped = {str(reason): int(count) for reason, count in payload.get("skipped", {}).items()}
    return Manifest(name=str(payload.get("name", file_path.stem)), records=records, skipped=skipped)
