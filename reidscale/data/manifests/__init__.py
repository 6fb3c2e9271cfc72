"""Manifests: every pre-training source read into one list of CropRecords (see ``..records``).

``load_manifest(kind, path, **options)`` dispatches on MANIFEST_KINDS:

- "video_tracklets": videos + MOT tracklet files (``read_video_tracklets``)
- "luperson_nl":     ``<video>/<pid>_<frame>_<obj>.jpg`` crop folders (``read_luperson_nl``)
- "luperson_nl_lmdb": LUPerson-NL's LMDB (``lmdb/`` + ``keys.pkl``), records ``<lmdb>::<key>``
                     (``read_luperson_nl_lmdb``)
- "cion_al":         the released CION-AL folder (``sec*/`` + ``cional_annos.json``) (``read_cion_al``)
- "cion_json":       CION-AL style JSON lists of ``{file_path, id}`` (``read_cion_json``)
- "market":          one split of a Market-format benchmark folder (``read_market_manifest``)
- "saved":           a manifest written by ``save_manifest`` (``read_saved_manifest``)

Readers are strict by default and skip-and-count with ``strict=False`` (common.py explains the policy);
``format_skip_report`` gives the end-of-job counts. Every file a manifest names must stay inside its corpus
root (``CorpusRoot``): an entry leaving it by ``..``, an absolute path, ``~`` or a symlink is "path_outside".
"""

from __future__ import annotations

import os

from reidscale.utils.registry import ReaderRegistry

from ..records import Manifest
from .common import (
    SKIP_REASONS,
    CorpusRoot,
    ManifestError,
    PathOutsideCorpusError,
    check_files_exist,
    format_skip_report,
    read_saved_manifest,
    save_manifest,
)
from .ground_truth import GroundTruth, GroundTruthSegment, identity_at, read_ground_truth
from .image_folders import read_cion_al, read_cion_json, read_luperson_nl, read_market_manifest
from .luperson_lmdb import read_luperson_nl_lmdb
from .mot import parse_mot_line
from .video_tracklets import VIDEO_EXTENSIONS, camera_of, read_camera_table, read_video_tracklets

_REGISTRY: ReaderRegistry[Manifest] = ReaderRegistry(
    ("manifest", "kind"),
    {
        "video_tracklets": read_video_tracklets,
        "luperson_nl": read_luperson_nl,
        "luperson_nl_lmdb": read_luperson_nl_lmdb,
        "cion_al": read_cion_al,
        "cion_json": read_cion_json,
        "market": read_market_manifest,
        "saved": read_saved_manifest,
    },
)
MANIFEST_KINDS: tuple[str, ...] = _REGISTRY.names


def manifest_options(kind: str) -> tuple[str, ...]:
    """The keyword options the reader of ``kind`` accepts besides the path."""
    return _REGISTRY.options(kind)


def load_manifest(kind: str, path: str | os.PathLike, **options: object) -> Manifest:
    """Read the manifest of ``kind`` (one of MANIFEST_KINDS) at ``path`` with the reader's ``options``."""
    return _REGISTRY.load(kind, path, **options)


__all__ = [
    "MANIFEST_KINDS",
    "SKIP_REASONS",
    "VIDEO_EXTENSIONS",
    "CorpusRoot",
    "GroundTruth",
    "GroundTruthSegment",
    "ManifestError",
    "PathOutsideCorpusError",
    "camera_of",
    "check_files_exist",
    "format_skip_report",
    "identity_at",
    "load_manifest",
    "manifest_options",
    "parse_mot_line",
    "read_camera_table",
    "read_cion_al",
    "read_cion_json",
    "read_ground_truth",
    "read_luperson_nl",
    "read_luperson_nl_lmdb",
    "read_market_manifest",
    "read_saved_manifest",
    "read_video_tracklets",
    "save_manifest",
]
