"""The on-disk layout of a set of crop shards, and the DALI index of one shard.

A shard set is a folder::

    shards.json            the set: format, records per shard, how many manifest records it covers, how
                           the crops were stored (JPEG size and quality, or copied), and one entry per
                           finished shard (its name, first manifest record, crops stored, skips by reason)
    shard-000000.tar       WebDataset shard: per stored crop ``<key>.jpg`` (the JPEG) and ``<key>.json``
                           (its metadata: record, source, video, tracklet, frame, box, camera, pid); the
                           key is the record's 10-digit manifest position, members in key order
    shard-000000.idx       its DALI index (``wds2idx`` format v1.2): what ``fn.readers.webdataset`` needs
                           to read the tar without scanning it
    shard-000000.npz       its record table (``data.record_table``): pids, cameras, ... without the tar
    skipped.jsonl          one line per record left out: ``{"file", "record", "reason"}``

Shard ``i`` holds the manifest records ``[i * records_per_shard, (i + 1) * records_per_shard)`` that could
be stored, so a shard's content depends only on the manifest and the set's settings: packing resumes at
the first shard ``shards.json`` does not list, and a shard it lists is complete (its files are in place
before the entry is written, atomically).

The DALI index (one text file per tar): the first line is ``v1.2 <samples>``; then one line per sample
listing its members, each as ``<extension> <offset of the data in the tar> <size> <member name>``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SHARDS_FORMAT = "reidscale-crop-shards-v1"
SET_FILE = "shards.json"
SKIPPED_FILE = "skipped.jsonl"
DALI_INDEX_VERSION = "v1.2"
KEY_DIGITS = 10
IMAGE_EXTENSION = "jpg"
META_EXTENSION = "json"
TAR_BLOCK = 512


class ShardError(ValueError):
    """A shard set, shard or record that cannot be read; the message names the file and the record."""


def shard_name(index: int) -> str:
    """The stem of shard ``index``'s files: ``shard-000042``."""
    return f"shard-{index:06d}"


def record_key(position: int) -> str:
    """The WebDataset key of the record at manifest position ``position``."""
    return f"{position:0{KEY_DIGITS}d}"


@dataclass(frozen=True)
class IndexEntry:
    """One member of a shard as its DALI index lists it."""

    extension: str
    offset: int  # of the member's data (after its 512-byte tar header)
    size: int
    name: str


def write_dali_index(path: str | os.PathLike, samples: list[list[IndexEntry]]) -> None:
    """Write the DALI index of a shard whose samples (each a list of its members) are ``samples``."""
    lines = [f"{DALI_INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{m.extension} {m.offset} {m.size} {m.name}" for m in members) for members in samples]
    Path(path).write_text("\n".join(lines) + "\n", encoding="ascii")


def read_dali_index(path: str | os.PathLike) -> list[list[IndexEntry]]:
    """The samples a DALI index lists; ShardError naming the file and line when it is not one."""
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ShardError(f"{path}: cannot read the shard index ({err})") from err
    header = lines[0].split() if lines else []
    if len(header) != 2 or header[0] != DALI_INDEX_VERSION or not header[1].isdigit():
        raise ShardError(
            f"{path}: line 1 is {lines[0] if lines else ''!r}, expected '{DALI_INDEX_VERSION} <samples>'"
        )
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise ShardError(
                f"{path}:{number}: expected '<ext> <offset> <size> <name>' per member, got {line!r}"
            )
        try:
            members = [
                IndexEntry(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
                for i in range(0, len(fields), 4)
            ]
        except ValueError as err:
            raise ShardError(f"{path}:{number}: offsets and sizes must be integers ({err})") from err
        samples.append(members)
    if len(samples) != int(header[1]):
        raise ShardError(f"{path}: line 1 announces {header[1]} samples, the file lists {len(samples)}")
    return samples


@dataclass(frozen=True)
class ShardEntry:
    """A finished shard: ``name`` (file stem), the manifest records it covers from ``first_record``, the
    crops it stores, its tar's size and the records left out by reason."""

    name: str
    first_record: int
    records: int
    crops: int
    tar_bytes: int
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class ShardSetInfo:
    """The content of ``shards.json``.

    total_records:     manifest records the set covers (positions 0 .. total_records − 1)
    records_per_shard: manifest records per shard (the last shard may cover fewer)
    storage:           how crops were stored, e.g. ``{"encoding": "jpeg", "quality": 95, "height": 256,
                       "width": 128}`` or ``{"encoding": "copied"}``
    source:            what was packed (manifest kind, path, fingerprint), compared on resume
    shards:            the finished shards, in order
    """

    total_records: int
    records_per_shard: int
    storage: dict[str, Any]
    source: dict[str, Any]
    shards: list[ShardEntry] = field(default_factory=list)

    @property
    def num_shards(self) -> int:
        """Shards the finished set has: ceil(total_records / records_per_shard)."""
        return -(-self.total_records // self.records_per_shard)

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.num_shards

    def shard_range(self, index: int) -> range:
        """The manifest positions shard ``index`` covers."""
        start = index * self.records_per_shard
        return range(start, min(start + self.records_per_shard, self.total_records))

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        return {"format": SHARDS_FORMAT, **payload}

    @classmethod
    def read(cls, folder: str | os.PathLike) -> ShardSetInfo:
        """``<folder>/shards.json``; ShardError naming the file and the field when it is not a shard set."""
        path = Path(folder) / SET_FILE
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ShardError(f"{folder} holds no {SET_FILE}: not a crop shard set") from None
        except (OSError, ValueError) as err:
            raise ShardError(f"{path}: not readable JSON ({err})") from err
        if not isinstance(payload, dict) or payload.get("format") != SHARDS_FORMAT:
            raise ShardError(f"{path}: format is not {SHARDS_FORMAT!r}")
        try:
            info = cls(
                total_records=int(payload["total_records"]),
                records_per_shard=int(payload["records_per_shard"]),
                storage=dict(payload["storage"]),
                source=dict(payload["source"]),
                shards=[ShardEntry(**entry) for entry in payload["shards"]],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ShardError(f"{path}: a field is missing or malformed ({err!r})") from err
        if info.records_per_shard < 1 or info.total_records < 0:
            raise ShardError(f"{path}: records_per_shard must be >= 1 and total_records >= 0")
        for index, entry in enumerate(info.shards):
            if entry.name != shard_name(index) or entry.first_record != info.shard_range(index).start:
                raise ShardError(
                    f"{path}: shards[{index}] is {entry.name} from record {entry.first_record}, "
                    f"expected {shard_name(index)} from record {info.shard_range(index).start}"
                )
        return info
