"""LUPerson-NL in its LMDB layout: ``read_luperson_nl_lmdb`` → one whole-image record per LMDB value.

The layout is the one LUPerson-NL's conversion script writes from the country/city/video crop tree and its
pre-training code reads (``--data_path <dir>/lmdb --info_path <dir>/keys.pkl``):

- ``<dir>/lmdb/``: an LMDB environment (``data.mdb``) holding, per crop, the JPEG file's bytes unchanged under
  the ASCII key ``<video>_<pid>_<frame>_<obj>``: ``<video>`` is the video's 1-based number, 5 digits, in
  sorted country/city/video order (a video name met again in another city is not stored twice), and
  ``<pid>_<frame>_<obj>`` is the crop file's name without ``.jpg``;
- ``<dir>/keys.pkl``: a pickle of ``{"keys": [key, ...], "pids": [pid, ...]}`` in write order, ``pids[i]``
  being the ``<pid>`` of ``keys[i]``.

Records point into the LMDB with the reference ``"<lmdb folder>::<key>"`` (``reidscale.data.image_bytes``),
which the packer copies byte for byte like a JPEG file. The original video names are not in the LMDB, so
``video`` is the 5-digit number; tracklets are (video, pid) as for the folder layout (``read_luperson_nl``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..datasets.base import absolute_folder, layout_tree
from ..image_bytes import cursor_has_key, is_lmdb_folder, lmdb_reference, open_lmdb
from ..records import WHOLE_IMAGE, CropRecord, Manifest
from .common import IssuePolicy, ManifestError, absolute_path, dense_labels
from .safe_pickle import load_plain_pickle

LMDB_KEY = re.compile(r"^(\d{5,})_(\d+)_(\d+)_(\d+)$")
KEY_HELP = "<video>_<pid>_<frame>_<obj> (integers, the video number of 5 or more digits)"
KEYS_FILE = "keys.pkl"
LMDB_SUBFOLDER = "lmdb"
LMDB_TREE = layout_tree(
    "<dir>/",
    [
        ("lmdb/data.mdb", "one JPEG per key <video>_<pid>_<frame>_<obj>, e.g. 00001_000012_0000345_01"),
        ("keys.pkl", 'pickle of {"keys": [str], "pids": [int]} (optional: without it the LMDB is listed)'),
    ],
)
KEYS_HELP = '{"keys": [<key str>, ...], "pids": [<int>, ...]} or a list of key strings'

#: (position in the key list, key, the pid listed beside it or None)
KeyEntry = tuple[int, str, int | None]


def _lmdb_folder(root: Path) -> Path:
    """The LMDB folder of ``root``: ``root/lmdb`` (the conversion's output folder) or ``root`` itself."""
    for folder in (root / LMDB_SUBFOLDER, root):
        if is_lmdb_folder(folder):
            return folder
    raise ManifestError(f"{root} holds neither lmdb/data.mdb nor data.mdb; expected layout:\n{LMDB_TREE}")


def _keys_path(lmdb_folder: Path, keys_file: str | os.PathLike | None) -> Path | None:
    """``keys_file``, else ``keys.pkl`` in the LMDB folder or beside it, else None (list the LMDB)."""
    if keys_file is not None:
        path = absolute_path(keys_file)
        if not path.is_file():
            raise FileNotFoundError(f"LUPerson-NL key list {path} does not exist")
        return path
    for folder in (lmdb_folder, lmdb_folder.parent):
        if (folder / KEYS_FILE).is_file():
            return folder / KEYS_FILE
    return None


def _pickled_keys(path: Path, policy: IssuePolicy) -> list[KeyEntry]:
    """The entries of the key list ``path``; a malformed entry is "bad_entry" (named by its position)."""
    payload = load_plain_pickle(path, "LUPerson-NL key list")
    pids: object = None
    if isinstance(payload, dict):
        if "keys" not in payload:
            raise ManifestError(f"{path}: the key list lacks 'keys'; expected {KEYS_HELP}")
        keys, pids = payload["keys"], payload.get("pids")
    else:
        keys = payload
    if not isinstance(keys, (list, tuple)):
        raise ManifestError(f"{path}: 'keys' is a {type(keys).__name__}; expected {KEYS_HELP}")
    if pids is not None and (not isinstance(pids, (list, tuple)) or len(pids) != len(keys)):
        shown = f"{len(pids)} pids" if isinstance(pids, (list, tuple)) else f"a {type(pids).__name__}"
        raise ManifestError(f"{path}: 'pids' is {shown} for {len(keys)} keys; expected one int per key")
    entries: list[KeyEntry] = []
    for index, key in enumerate(keys):
        pid = None if pids is None else pids[index]
        if isinstance(key, bytes) and key.isascii():  # a Python 2 pickle's str
            key = key.decode("ascii")
        if not isinstance(key, str):
            message = f"{path}: entry {index}: key {key!r} is a {type(key).__name__}, expected a str"
            policy.corrupt("bad_entry", message, file=path, record=index)
            continue
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
            message = f"{path}: entry {index}: pids[{index}] = {pid!r}, expected an int"
            policy.corrupt("bad_entry", message, file=path, record=index)
            continue
        entries.append((index, key, pid))
    return entries


def _listed_keys(lmdb_folder: Path, environment: Any, policy: IssuePolicy) -> list[KeyEntry]:
    """Every key of the LMDB in its (sorted) order; a key that is not text is "bad_key"."""
    entries: list[KeyEntry] = []
    with environment.begin(write=False) as transaction:
        for index, raw in enumerate(transaction.cursor().iternext(keys=True, values=False)):
            try:
                entries.append((index, bytes(raw).decode("utf-8"), None))
            except UnicodeDecodeError:
                message = f"{lmdb_folder}: key {bytes(raw)!r} is not text; expected {KEY_HELP}"
                policy.corrupt("bad_key", message, file=lmdb_folder, record=index)
    return entries


def read_luperson_nl_lmdb(
    path: str | os.PathLike, keys_file: str | os.PathLike | None = None, *, strict: bool = True
) -> Manifest:
    """LUPerson-NL's LMDB layout (module doc) → one whole-image record per key, source ``<lmdb>::<key>``.

    ``path`` is the conversion's output folder (holding ``lmdb/`` and ``keys.pkl``) or the LMDB folder itself;
    the key list is ``keys_file``, else ``keys.pkl`` in the LMDB folder or beside it, else every key of the
    LMDB. The key list is unpickled without running code (``safe_pickle``). A tracklet is (video, pid);
    tracklets are numbered 0..n−1 in (video number, pid) order and the number is both ``pid`` and
    ``tracklet``; ``camera`` is −1; records are sorted by (video, pid, frame, obj), numerically. A key that
    does not parse ("bad_key"), a malformed key-list entry or a listed pid that differs from the key's
    ("bad_entry"), a repeated key ("duplicate_key") or a listed key absent from the LMDB ("missing_key") is
    an error naming the file, entry and key (strict) or skipped and counted. Values are not read here: an
    undecodable one is skipped (or fatal with strict) when packing.
    """
    root = absolute_folder(path, "LUPerson-NL LMDB folder", LMDB_TREE)
    lmdb_folder = _lmdb_folder(root)
    keys_path = _keys_path(lmdb_folder, keys_file)
    manifest = Manifest(name=f"luperson_nl_lmdb:{lmdb_folder}", records=[])
    policy = IssuePolicy(manifest, strict)
    environment = open_lmdb(lmdb_folder)
    listing: Path = lmdb_folder if keys_path is None else keys_path
    if keys_path is None:
        entries = _listed_keys(lmdb_folder, environment, policy)
    else:
        entries = _pickled_keys(keys_path, policy)
    if not entries and not manifest.skipped:
        raise ManifestError(f"{listing}: no keys listed; expected layout:\n{LMDB_TREE}")
    parsed: list[tuple[int, int, int, int, str, str]] = []
    seen: set[str] = set()
    with environment.begin(write=False) as transaction:
        cursor = transaction.cursor()
        for index, key, listed_pid in entries:
            where = f"{listing}: entry {index}: key {key!r}"
            match = LMDB_KEY.match(key)
            if match is None:
                policy.corrupt("bad_key", f"{where} is not {KEY_HELP}", file=listing, record=index)
                continue
            video = match.group(1)
            pid, frame, obj = (int(group) for group in match.groups()[1:])
            if listed_pid is not None and listed_pid != pid:
                message = f"{where} names pid {pid} but pids[{index}] = {listed_pid}"
                policy.corrupt("bad_entry", message, file=listing, record=index)
                continue
            if key in seen:
                policy.corrupt("duplicate_key", f"{where} repeats an earlier key", file=listing, record=index)
                continue
            if keys_path is not None and not cursor_has_key(cursor, key):
                message = f"{where} is not in the LMDB {lmdb_folder}"
                policy.corrupt("missing_key", message, file=listing, record=index)
                continue
            seen.add(key)
            parsed.append((int(video), pid, frame, obj, video, key))
    labels = dense_labels((number, pid) for number, pid, *_ in parsed)
    for number, pid, _, _, video, key in sorted(parsed):
        label = labels[(number, pid)]
        source = lmdb_reference(lmdb_folder, key)
        manifest.records.append(CropRecord(source, -1, WHOLE_IMAGE, label, -1, video, label))
    return manifest
