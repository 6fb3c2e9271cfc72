"""What every manifest reader shares: the strict / skip-and-count policy, relabelling, reports, saving.

Strictness: with ``strict=True`` (the default of every reader) the first corrupt item stops the read with a
ManifestError naming the file (and line or entry) and what was expected: right for small or new datasets,
where a bad line is a bug to fix. A long job passes ``strict=False``: corrupt items are skipped, counted
by reason in ``Manifest.skipped`` and named (file, line or entry, reason) in ``Manifest.skipped_entries``;
``format_skip_report`` prints the counts at the end. Data-quality filters (tiny boxes) skip in both modes;
repairs that keep the item (a box clipped to the frame) are counted only.

Containment: every file a manifest names must lie inside its corpus root (``CorpusRoot``), both by name
(after ``~`` expansion and ``..`` collapsing) and after following symlinks; an entry that leaves the root is
corrupt ("path_outside"), so a manifest cannot make a job read ``/etc/passwd`` or a stranger's files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Hashable, Iterable
from pathlib import Path

from ...utils.io import atomic_write_json
from ..image_bytes import image_source_exists
from ..records import CropRecord, Manifest, SkippedRecord

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
    "bad_entry": "JSON or key-list entries without a usable file path, key or id",
    "duplicate_path": "JSON entries repeating an earlier file path",
    "path_outside": "entries whose file path leaves the corpus root (.., absolute, ~ or a symlink)",
    "bad_key": "LMDB keys that do not parse",
    "duplicate_key": "key-list entries repeating an earlier LMDB key",
    "missing_key": "key-list entries whose key is not in the LMDB",
}
KEPT_REASONS: frozenset[str] = frozenset({"box_clipped"})


class ManifestError(ValueError):
    """Invalid manifest input; the message names the file (line or entry) and what was expected."""


class IssuePolicy:
    """Raise on a corrupt item (strict) or skip it: counted under its reason in ``manifest.skipped`` and
    named (file, record, reason) in ``manifest.skipped_entries``."""

    def __init__(self, manifest: Manifest, strict: bool) -> None:
        self.manifest = manifest
        self.strict = strict

    def corrupt(self, reason: str, message: str, *, file: str | os.PathLike, record: int = -1) -> None:
        """Handle the corrupt item ``record`` of ``file`` (−1: the whole file); ManifestError(message) in
        strict mode."""
        if self.strict:
            raise ManifestError(message)
        self.manifest.skip(reason, file, record)

    def filtered(self, reason: str, *, file: str | os.PathLike, record: int = -1) -> None:
        """Skip an item a data-quality filter leaves out (a tiny box), in both modes."""
        self.manifest.skip(reason, file, record)

    def repaired(self, reason: str) -> None:
        """Count an item kept after a repair (a box clipped to the frame), in both modes."""
        self.manifest.count_skip(reason)


def dense_labels(keys: Iterable[Hashable]) -> dict[Hashable, int]:
    """Map each distinct key to 0..n−1 in ascending key order."""
    return {key: label for label, key in enumerate(sorted(set(keys)))}


def absolute_path(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded, made absolute (not resolved: symlinked corpora keep their names)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


class PathOutsideCorpusError(ManifestError):
    """A manifest entry whose file path leaves its corpus root; the message names the path and the root."""


class CorpusRoot:
    """The folder every file of a manifest must stay inside.

    ``path`` is the root made absolute (``~`` expanded, not resolved); ``resolved`` is ``path.resolve()``.
    A file is inside when its normalised path is under ``path`` and its ``resolve()``d path (symlinks
    followed, the containing folders' resolutions cached) is under ``resolved``.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.path = absolute_path(root)
        self.resolved = self.path.resolve()
        self._resolved_folders: dict[str, Path] = {}

    def entry_path(self, entry: str | os.PathLike) -> str:
        """The absolute, normalised path of manifest ``entry`` (relative to the root, absolute, or starting
        with ``~``, which is expanded); PathOutsideCorpusError naming ``entry`` when it leaves the root."""
        expanded = os.path.expanduser(os.fspath(entry))
        normalized = os.path.normpath(os.path.join(self.path, expanded))
        self._require_inside(repr(os.fspath(entry)), normalized)
        return normalized

    def require_inside(self, path: str | os.PathLike) -> None:
        """PathOutsideCorpusError naming ``path`` (absolute or relative to the root) when it leaves it."""
        normalized = os.path.normpath(os.path.join(self.path, os.fspath(path)))
        self._require_inside(repr(os.fspath(path)), normalized)

    def _require_inside(self, shown: str, normalized: str) -> None:
        if not Path(normalized).is_relative_to(self.path):
            named_as = "" if shown == repr(normalized) else f" (as {normalized})"
            raise PathOutsideCorpusError(f"file path {shown} leaves the corpus root {self.path}{named_as}")
        resolved = self._resolve(normalized)
        if not resolved.is_relative_to(self.resolved):
            raise PathOutsideCorpusError(
                f"file path {shown} resolves through a symlink to {resolved}, outside the corpus root "
                f"{self.resolved}"
            )

    def _resolve(self, normalized: str) -> Path:
        """``Path(normalized).resolve()`` for an absolute normalised path, resolving each folder once."""
        folder, name = os.path.split(normalized)
        resolved_folder = self._resolved_folders.get(folder)
        if resolved_folder is None:
            resolved_folder = self._resolved_folders[folder] = Path(folder).resolve()
        candidate = resolved_folder / name
        return candidate.resolve() if candidate.is_symlink() else candidate


def inside_corpus(
    corpus: CorpusRoot,
    entry: str | os.PathLike,
    policy: IssuePolicy,
    where: str,
    *,
    file: str | os.PathLike | None = None,
    record: int = -1,
) -> str | None:
    """``corpus.entry_path(entry)``, or None when the entry leaves the corpus: then ``policy.corrupt`` raises
    ManifestError("<where>: file path ... leaves the corpus root ...") in strict mode or skips it as
    "path_outside". ``where`` names the manifest file and the entry (or the listed folder); the skip is
    listed as entry ``record`` of ``file`` (default: the entry itself as a whole file)."""
    try:
        return corpus.entry_path(entry)
    except PathOutsideCorpusError as err:
        policy.corrupt("path_outside", f"{where}: {err}", file=entry if file is None else file, record=record)
        return None


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
    """The sources of ``manifest`` that name nothing (no such file, or a key absent from its LMDB: see
    ``reidscale.data.image_bytes``), sorted; checks all or a random ``sample`` of them.

    Sampling draws ``sample`` distinct sources with ``random.Random(seed)`` (a cheap spot check of a
    10M-image manifest); ``sample`` must be positive.
    """
    sources = sorted({record.source for record in manifest.records})
    if sample is not None:
        if sample <= 0:
            raise ValueError(f"sample must be a positive number of files or None, got {sample}")
        if sample < len(sources):
            sources = sorted(random.Random(seed).sample(sources, sample))
    return [source for source in sources if not image_source_exists(source)]


def save_manifest(
    manifest: Manifest, path: str | os.PathLike, *, corpus_root: str | os.PathLike | None = None
) -> Path:
    """Write ``manifest`` (records, skip counts and corpus root) to ``path`` as JSON, atomically.

    Reading a corpus of thousands of videos probes every file; saving the result lets later runs start at
    once with ``load_manifest("saved", path)``. ``corpus_root`` is the folder the records' files must stay
    in when read back; None records the deepest folder holding every source (nothing for no records).
    """
    rows = [[r.source, r.frame, *r.box, r.pid, r.camera, r.video, r.tracklet] for r in manifest.records]
    if corpus_root is not None:
        root: str | None = str(absolute_path(corpus_root))
    elif manifest.records:
        root = os.path.commonpath([os.path.dirname(absolute_path(r.source)) for r in manifest.records])
    else:
        root = None
    payload = {
        "format": SAVED_MANIFEST_FORMAT,
        "name": manifest.name,
        "corpus_root": root,
        "skipped": manifest.skipped,
        "skipped_entries": [entry.as_dict() for entry in manifest.skipped_entries],
        "columns": ["source", "frame", "x", "y", "w", "h", "pid", "camera", "video", "tracklet"],
        "records": rows,
    }
    return atomic_write_json(path, payload, indent=None)


def _saved_corpus(file_path: Path, payload: dict, corpus_root: str | os.PathLike | None) -> CorpusRoot:
    root = corpus_root if corpus_root is not None else payload.get("corpus_root")
    if root is None:
        raise ManifestError(
            f"{file_path}: records no corpus_root (saved before roots were recorded); pass "
            "corpus_root=<the folder holding its files>"
        )
    if not isinstance(root, (str, os.PathLike)):
        raise ManifestError(f"{file_path}: corpus_root = {root!r}, expected a folder path string")
    return CorpusRoot(root)


def read_saved_manifest(
    path: str | os.PathLike, corpus_root: str | os.PathLike | None = None, *, strict: bool = True
) -> Manifest:
    """Read a file written by ``save_manifest``; ManifestError naming the file and record on bad content.

    Every source must stay inside ``corpus_root`` (default: the root the file records; a file recording
    none needs the argument): a record that leaves it is an error naming the file, record and path
    (``strict``) or skipped and counted as "path_outside"; relative sources are joined to the root.
    """
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
    manifest = Manifest(name=str(payload.get("name", file_path.stem)), records=[], skipped=skipped)
    manifest.skipped_entries = _saved_skipped_entries(file_path, payload.get("skipped_entries", []))
    policy = IssuePolicy(manifest, strict)
    if records:
        corpus = _saved_corpus(file_path, payload, corpus_root)
        manifest.records = _records_inside(corpus, records, policy, file_path)
    return manifest


def _saved_skipped_entries(file_path: Path, rows: object) -> list[SkippedRecord]:
    """The ``skipped_entries`` of a saved manifest; ManifestError naming the file and entry when malformed."""
    if not isinstance(rows, list):
        raise ManifestError(f"{file_path}: skipped_entries is {type(rows).__name__}, expected a list")
    entries = []
    for index, row in enumerate(rows):
        try:
            entries.append(SkippedRecord.from_dict(row))
        except ValueError as err:
            raise ManifestError(f"{file_path}: skipped_entries[{index}] is {err}") from err
    return entries


def _records_inside(
    corpus: CorpusRoot, records: list[CropRecord], policy: IssuePolicy, file_path: Path
) -> list[CropRecord]:
    """The records whose source stays inside ``corpus``; relative sources joined to it, absolute kept verbatim
    (exact round trips)."""
    kept = []
    for index, record in enumerate(records):
        where = f"{file_path}: record {index}"
        inside = inside_corpus(corpus, record.source, policy, where, file=file_path, record=index)
        if inside is None:
            continue
        kept.append(record if os.path.isabs(record.source) else dataclasses.replace(record, source=inside))
    return kept
