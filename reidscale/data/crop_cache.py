"""A fixed, indexed set of person crops decoded once and kept on disk: ``build_crop_cache(records, …)``.

Layout of one cache (``<cache_dir>/crops_<H>x<W>_<fingerprint[:16]>/``)::

    crops.npy   uint8 [N, H, W, 3] RGB, row n = the n-th record that decoded (records in input order);
                opened with ``np.load(mmap_mode="r")``, so N = 1M crops (≈ 98 GB at 256×128) stays on disk
    rows.npz    the record table (``data.record_table``): per row record (position in the input records),
                camera, tracklet, pid, frame, box [N, 4],
                source / video (int32 indices into the string tables ``sources`` / ``videos``)
    meta.json   format version, fingerprint, H, W, record and row counts, decode statistics
    skipped.jsonl  one line per skipped record the decoders could name: ``{"file", "record", "reason"}``
                (record = position in the input records); absent when none was skipped

The folder is written under a temporary name and renamed into place once complete, so a crash mid-build
leaves no folder that looks like a cache (only a ``.building_*`` folder to delete). The fingerprint covers
the records (every field), the size and modification time of every source file, H, W and the format
version: a changed corpus or crop size gets a new folder, an unchanged one is reused. The decoding backend
is not part of it (DALI and PyAV crops are both valid crops of the same records).

Decoding: ``data.decode.crops.decode_crops`` (video boxes through the crop loader, image files with PIL);
records that fail are skipped and counted in ``DecodeStats``, never raised.

Ranks: global rank 0 builds; the other ranks poll until the folder is complete, then all meet at a
barrier when a process group exists (polling, not a barrier, covers the build: a long build would outlast
the process group's timeout).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reidscale.data.decode.crops import decode_crops
from reidscale.data.decode.stats import DecodeStats
from reidscale.data.record_table import record_table
from reidscale.data.records import CropRecord, SkippedRecord
from reidscale.utils.dist import get_rank, get_world_size
from reidscale.utils.io import atomic_write, atomic_write_json, atomic_write_text

CACHE_FORMAT_VERSION = 1
CACHE_STATUSES: tuple[str, ...] = ("built", "reused", "opened")
SKIPPED_FILE = "skipped.jsonl"
LOG_EVERY_S = 10.0
CropProgressCallback = Callable[[int, int], None]  # (records handled so far, total records)
logger = logging.getLogger(__name__)


@dataclass
class CropCache:
    """An opened crop cache (see the module docstring for the files).

    rows:   name → array of per-row metadata (``record``, ``camera``, ``tracklet``, ``pid``, ``frame``: int64
            [N]; ``box``: int64 [N, 4]; ``source``, ``video``: int32 [N] into ``sources`` / ``videos``)
    status: "built" (this process decoded it), "reused" (rank 0 found it complete) or "opened" (another
            rank built or checked it)
    """

    folder: Path
    height: int
    width: int
    num_records: int
    rows: dict[str, np.ndarray]
    sources: list[str]
    videos: list[str]
    stats: DecodeStats
    status: str
    _crops: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_rows(self) -> int:
        return int(self.rows["record"].shape[0])

    @property
    def crops(self) -> np.ndarray:
        """uint8 [N, H, W, 3], memory-mapped read-only (opened on first use, e.g. in each loader worker)."""
        if self._crops is None:
            self._crops = np.load(self.folder / "crops.npy", mmap_mode="r")
        return self._crops

    def crop(self, index: int) -> np.ndarray:
        """uint8 [H, W, 3]: row ``index``, copied out of the read-only memory map."""
        return np.array(self.crops[index])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_crops"] = None  # a pickled memmap would copy the whole array; reopen instead
        return state


def cache_fingerprint(records: Sequence[CropRecord], height: int, width: int) -> str:
    """sha256 hex of the records (all fields, in order), their source files' size + mtime, H, W, version."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT_VERSION, int(height), int(width)]).encode())
    for record in records:
        fields = [record.source, record.frame, list(record.box), record.pid, record.camera, record.video]
        digest.update(json.dumps([*fields, record.tracklet]).encode())
        digest.update(b"\n")
    for source in sorted({record.source for record in records}):
        try:
            info = os.stat(source)
            digest.update(json.dumps([source, info.st_size, info.st_mtime_ns]).encode())
        except OSError:
            digest.update(json.dumps([source, "missing"]).encode())
    return digest.hexdigest()


def cache_folder(cache_dir: str | os.PathLike, fingerprint: str, height: int, width: int) -> Path:
    """Where the cache of ``fingerprint`` at H×W lives inside ``cache_dir``."""
    return Path(cache_dir) / f"crops_{height}x{width}_{fingerprint[:16]}"


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds a finished cache of this format version."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("format_version") == CACHE_FORMAT_VERSION and (folder / "crops.npy").is_file()


def open_crop_cache(folder: str | os.PathLike, status: str = "opened") -> CropCache:
    """Open the finished cache in ``folder`` (crops are memory-mapped lazily)."""
    folder = Path(folder)
    if status not in CACHE_STATUSES:
        raise ValueError(f"status must be one of {CACHE_STATUSES}, got {status!r}")
    if not is_complete(folder):
        raise FileNotFoundError(f"{folder} is not a complete crop cache (format {CACHE_FORMAT_VERSION})")
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    with np.load(folder / "rows.npz", allow_pickle=False) as table:
        rows = {name: table[name] for name in table.files if name not in ("sources", "videos")}
        sources, videos = table["sources"].tolist(), table["videos"].tolist()
    stats = DecodeStats(**meta["stats"], skipped_records=read_skipped_records(folder / SKIPPED_FILE))
    return CropCache(
        folder, meta["height"], meta["width"], meta["num_records"], rows, sources, videos, stats, status
    )


def skipped_records_jsonl(entries: Sequence[SkippedRecord]) -> str:
    """``entries`` as JSON lines ``{"file": ..., "record": ..., "reason": ...}`` (one per entry, each ending
    in a newline; "" for none)."""
    return "".join(json.dumps(entry.as_dict()) + "\n" for entry in entries)


def read_skipped_records(path: Path) -> list[SkippedRecord]:
    """The entries of a ``skipped.jsonl`` written by ``skipped_records_jsonl``; [] when ``path`` is absent."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = []
    for line in lines:
        if line.strip():
            entries.append(SkippedRecord.from_dict(json.loads(line)))
    return entries


class _ProgressCounter:
    """Counts handled records; calls ``callback`` on every update and logs a line every LOG_EVERY_S."""

    def __init__(self, total: int, callback: CropProgressCallback | None) -> None:
        self.total, self.callback, self.done = total, callback, 0
        self.started = self.last_log = time.monotonic()

    def add(self, count: int) -> None:
        self.done += count
        if self.callback is not None:
            self.callback(self.done, self.total)
        now = time.monotonic()
        if now - self.last_log >= LOG_EVERY_S:
            self.last_log = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float("nan")
            logger.info(
                "crop cache: %d / %d records (%.0f/s), about %.0f s left", self.done, self.total, rate, left
            )


def _decode_into(
    records: Sequence[CropRecord],
    crops: np.ndarray,
    backend: str,
    device: str,
    num_threads: int,
    progress: _ProgressCounter,
) -> tuple[np.ndarray, DecodeStats]:
    """Write the crop of record i into crops[i]; returns (decoded bool [len(records)], stats)."""
    decoded = np.zeros(len(records), dtype=bool)
    stats = DecodeStats()
    out_size = (int(crops.shape[1]), int(crops.shape[2]))
    for rows, batch in decode_crops(records, out_size, stats, backend, device, num_threads):
        crops[rows] = batch
        decoded[rows] = True
        progress.add(len(rows))
    progress.add(len(records) - int(decoded.sum()))  # the skipped ones
    return decoded, stats


def _compact_npy(path: Path, keep: np.ndarray) -> None:
    """Drop the rows of the .npy at ``path`` where ``keep`` is False, in place (rows move only down), then
    rewrite the header's shape in the same number of bytes and truncate the file."""
    array = np.load(path, mmap_mode="r+")
    offset, row_shape = array.offset, array.shape[1:]
    kept = np.flatnonzero(keep)
    chunk = 256
    for start in range(0, kept.size, chunk):
        sources = kept[start : start + chunk]
        array[start : start + sources.size] = array[sources]  # destinations <= sources: safe in order
    array.flush()
    del array
    shape = (int(kept.size), *row_shape)
    with open(path, "r+b") as handle:
        prefix = handle.read(8)
        length_bytes = 2 if prefix[6] == 1 else 4
        text = repr({"descr": "|u1", "fortran_order": False, "shape": shape})
        room = offset - 8 - length_bytes
        if len(text) + 1 > room:
            raise RuntimeError(f"{path}: the compacted header does not fit in {room} bytes")
        handle.seek(8 + length_bytes)
        handle.write((text.ljust(room - 1) + "\n").encode("latin1"))
        handle.truncate(offset + int(np.prod(shape)))


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _write_cache(
    records: Sequence[CropRecord],
    folder: Path,
    fingerprint: str,
    out_size: tuple[int, int],
    decode: dict,
    progress: CropProgressCallback | None,
) -> None:
    """Decode ``records`` into a temporary folder beside ``folder`` and rename it into place."""
    building = folder.parent / f".building_{folder.name}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    building.mkdir(parents=True)
    try:
        shape = (len(records), *out_size, 3)
        crops = np.lib.format.open_memmap(building / "crops.npy", mode="w+", dtype=np.uint8, shape=shape)
        decoded, stats = _decode_into(
            records, crops, progress=_ProgressCounter(len(records), progress), **decode
        )
        crops.flush()
        del crops
        if not decoded.any():
            raise ValueError(f"none of the {len(records)} records decoded ({stats.summary()})")
        if not decoded.all():
            _compact_npy(building / "crops.npy", decoded)
        kept = np.flatnonzero(decoded)
        table = record_table([records[i] for i in kept], kept)
        atomic_write(building / "rows.npz", lambda tmp: _save_npz(tmp, table))
        meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "fingerprint": fingerprint,
            "height": out_size[0],
            "width": out_size[1],
            "num_records": len(records),
            "num_rows": int(decoded.sum()),
            "stats": {"decoded_frames": stats.decoded_frames, "crops": stats.crops, "skipped": stats.skipped},
        }
        if stats.skipped_records:
            atomic_write_text(building / SKIPPED_FILE, skipped_records_jsonl(stats.skipped_records))
        atomic_write_json(building / "meta.json", meta)
        try:
            os.rename(building, folder)
        except OSError:
            if not is_complete(folder):  # another job finished the same cache first: use theirs
                raise
            shutil.rmtree(building, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _wait_for(folder: Path, timeout_s: float, poll_s: float) -> None:
    started = time.monotonic()
    while not is_complete(folder):
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"rank {get_rank()}: crop cache {folder} not built by rank 0 in {timeout_s} s")
        time.sleep(poll_s)


def build_crop_cache(
    records: Sequence[CropRecord],
    cache_dir: str | os.PathLike,
    out_size: tuple[int, int],
    *,
    backend: str = "auto",
    device: str = "cpu",
    num_threads: int = 2,
    progress: CropProgressCallback | None = None,
    wait_timeout_s: float = 24 * 3600.0,
    poll_s: float = 0.5,
) -> CropCache:
    """The cache of ``records`` at ``out_size`` (H, W) in ``cache_dir``: reused when complete, else built
    by global rank 0 (the other ranks wait for it); see the module docstring.

    backend / device: as ``build_crop_loader`` ("auto" | "dali" | "pyav"; "cpu" | "gpu") for video records.
    progress: called as ``progress(records handled, total)`` while rank 0 decodes.
    """
    if len(records) == 0:
        raise ValueError("records is empty: nothing to cache")
    if len(out_size) != 2 or min(out_size) < 1:
        raise ValueError(f"out_size must be two positive integers (H, W), got {out_size!r}")
    height, width = int(out_size[0]), int(out_size[1])
    fingerprint = cache_fingerprint(records, height, width)
    folder = cache_folder(cache_dir, fingerprint, height, width)
    status = "opened"
    if get_rank() == 0:
        status = "reused"
        if not is_complete(folder):
            decode = {"backend": backend, "device": device, "num_threads": num_threads}
            _write_cache(records, folder, fingerprint, (height, width), decode, progress)
            status = "built"
    else:
        _wait_for(folder, wait_timeout_s, poll_s)
    if get_world_size() > 1:
        import torch.distributed as torch_dist

        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.barrier()
    return open_crop_cache(folder, status)
