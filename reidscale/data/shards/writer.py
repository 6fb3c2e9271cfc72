"""Writing a crop shard set, shard by shard, resumably: ``ShardSetWriter`` (layout in ``layout.py``).

Each shard's files are written under temporary names and renamed into place (``utils.io.atomic_write``),
then the shard is added to ``shards.json`` (rewritten atomically): an interrupted pack leaves every listed
shard complete and at most the files of one unlisted shard, which the next run overwrites. A writer opened
on a folder that holds a set of other settings or another source refuses it instead of mixing the two.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reidscale.data.record_table import record_table
from reidscale.data.records import CropRecord, SkippedRecord
from reidscale.data.shards.layout import (
    IMAGE_EXTENSION,
    META_EXTENSION,
    SET_FILE,
    TAR_BLOCK,
    IndexEntry,
    ShardEntry,
    ShardError,
    ShardSetInfo,
    record_key,
    shard_name,
    write_dali_index,
)
from reidscale.utils.io import atomic_write, atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class PackedCrop:
    """One crop to store: its manifest ``position``, its ``record`` and the JPEG bytes."""

    position: int
    record: CropRecord
    jpeg: bytes


def crop_metadata(crop: PackedCrop) -> dict[str, Any]:
    """The ``<key>.json`` member of a crop: every field of its record and its manifest position."""
    record = crop.record
    return {
        "record": crop.position,
        "source": record.source,
        "video": record.video,
        "tracklet": record.tracklet,
        "frame": record.frame,
        "box": list(record.box),
        "camera": record.camera,
        "pid": record.pid,
    }


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info


def _write_tar(path: Path, crops: Sequence[PackedCrop]) -> list[list[IndexEntry]]:
    """Write ``crops`` as a USTAR tar (per crop ``<key>.jpg`` then ``<key>.json``); their index entries."""
    samples: list[list[IndexEntry]] = []
    with (
        open(path, "wb") as handle,
        tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for crop in crops:
            key = record_key(crop.position)
            members = []
            metadata = json.dumps(crop_metadata(crop), sort_keys=True).encode()
            for extension, data in ((IMAGE_EXTENSION, crop.jpeg), (META_EXTENSION, metadata)):
                name = f"{key}.{extension}"
                data_offset = tar.offset + TAR_BLOCK  # a USTAR header of a short name is one block
                tar.addfile(_member(name, len(data)), io.BytesIO(data))
                members.append(IndexEntry(extension, data_offset, len(data), name))
            samples.append(members)
    return samples


def _save_table(path: Path, crops: Sequence[PackedCrop]) -> None:
    table = record_table([crop.record for crop in crops], [crop.position for crop in crops])
    with open(path, "wb") as handle:
        np.savez(handle, **table)


def skipped_jsonl(entries: Sequence[SkippedRecord]) -> str:
    """``entries`` as JSON lines (one ``{"file", "record", "reason"}`` each)."""
    return "".join(json.dumps(entry.as_dict()) + "\n" for entry in entries)


class ShardSetWriter:
    """Writes the shards of one set into ``folder`` in order, resuming where an earlier run stopped.

    ``total_records``, ``records_per_shard``, ``storage`` and ``source``: see ``ShardSetInfo``. A folder that
    already holds a set with the same four values is resumed (``pending()`` lists the shards left); one with
    other values, or a non-empty folder that holds no set, is refused with a ShardError.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        total_records: int,
        records_per_shard: int,
        storage: dict[str, Any],
        source: dict[str, Any],
    ) -> None:
        if records_per_shard < 1:
            raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
        self.folder = Path(folder)
        wanted = ShardSetInfo(int(total_records), int(records_per_shard), dict(storage), dict(source))
        if (self.folder / SET_FILE).is_file():
            found = ShardSetInfo.read(self.folder)
            mine = (wanted.total_records, wanted.records_per_shard, wanted.storage, wanted.source)
            theirs = (found.total_records, found.records_per_shard, found.storage, found.source)
            if mine != theirs:
                raise ShardError(
                    f"{self.folder} holds a shard set of other settings or another source ({theirs} against "
                    f"{mine}); pack into another folder, or remove it to start again"
                )
            self.info = found
            return
        if self.folder.exists() and any(self.folder.iterdir()):
            raise ShardError(f"{self.folder} is not empty and holds no {SET_FILE}: pack into an empty folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.info = wanted
        atomic_write_json(self.folder / SET_FILE, self.info.to_json())

    def pending(self) -> list[int]:
        """The shards still to write, in order."""
        return list(range(len(self.info.shards), self.info.num_shards))

    def add(
        self, index: int, crops: Sequence[PackedCrop], skipped: Sequence[SkippedRecord] = ()
    ) -> ShardEntry:
        """Write shard ``index`` (the next pending one) holding ``crops`` (positions increasing, inside the
        shard's range); ``skipped`` names the shard's records left out. Returns its entry."""
        if index != len(self.info.shards):
            raise ValueError(f"shard {index} is not the next one to write ({len(self.info.shards)})")
        covered = self.info.shard_range(index)
        positions = [crop.position for crop in crops]
        if positions != sorted(set(positions)) or any(p not in covered for p in positions):
            raise ValueError(
                f"shard {index} takes increasing positions in {covered}, got {positions[:10]} ..."
            )
        stem = self.folder / shard_name(index)
        atomic_write(stem.with_suffix(".npz"), lambda tmp: _save_table(tmp, crops))
        samples: list[list[IndexEntry]] = []
        tar_path = atomic_write(stem.with_suffix(".tar"), lambda tmp: samples.extend(_write_tar(tmp, crops)))
        atomic_write(stem.with_suffix(".idx"), lambda tmp: write_dali_index(tmp, samples))
        skipped_path = stem.with_suffix(".skipped.jsonl")
        if skipped:
            atomic_write_text(skipped_path, skipped_jsonl(skipped))
        else:
            skipped_path.unlink(missing_ok=True)
        entry = ShardEntry(
            name=shard_name(index),
            first_record=covered.start,
            records=len(covered),
            crops=len(crops),
            tar_bytes=tar_path.stat().st_size,
            skipped=dict(Counter(entry.reason for entry in skipped)),
        )
        self.info.shards.append(entry)
        atomic_write_json(self.folder / SET_FILE, self.info.to_json())
        return entry
