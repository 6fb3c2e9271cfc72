"""Reading a finished crop shard set by row: ``CropShards(folder)`` (layout in ``layout.py``).

Row ``r`` is the r-th stored crop over all shards in order. The record tables of every shard are loaded at
open (identities, cameras, tracklets, manifest positions: what a sampler needs); a crop's JPEG is read on
demand from its shard at the offset its DALI index gives, after checking the tar header there names the
crop's member with the indexed size, so an index that disagrees with its tar, a truncated tar or a missing
file is an error naming the shard and the record, never wrong pixels.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from reidscale.data.record_table import ROW_FIELDS, check_record_table, table_record
from reidscale.data.records import CropRecord, SkippedRecord
from reidscale.data.shards.layout import (
    IMAGE_EXTENSION,
    TAR_BLOCK,
    IndexEntry,
    ShardError,
    ShardSetInfo,
    read_dali_index,
    record_key,
)


def _tar_header_member(header: bytes) -> tuple[str, int]:
    """(member name, size) from a 512-byte USTAR header."""
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    size_field = header[124:136].split(b"\0", 1)[0].strip() or b"0"
    return name, int(size_field, 8)


def _merge_tables(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One record table of the shards' numeric fields and videos (video indices remapped to the union of the
    shards' video names); the per-image ``source`` paths stay in the shards' own tables (millions of
    strings for image corpora, needed only to name a record)."""
    merged: dict[str, np.ndarray] = {}
    names = sorted({str(name) for table in tables for name in table["videos"]})
    position = {name: i for i, name in enumerate(names)}
    remapped = [
        np.array([position[str(name)] for name in table["videos"]], dtype=np.int32)[table["video"]]
        if len(table["video"])
        else np.zeros(0, dtype=np.int32)
        for table in tables
    ]
    merged["video"] = np.concatenate(remapped) if remapped else np.zeros(0, dtype=np.int32)
    merged["videos"] = np.array(names, dtype=str)
    for name in ROW_FIELDS:
        if name not in merged and name != "source":
            parts = [table[name] for table in tables]
            empty = np.zeros((0, 4) if name == "box" else (0,), dtype=np.int64)
            merged[name] = np.concatenate(parts) if parts else empty
    return merged


class CropShards:
    """A finished shard set, read by row.

    table:  the merged record table (``data.record_table``) without the per-image ``source`` paths (read
            from the shard's own table by ``record``), row r = the r-th stored crop
    info:   the set's ``ShardSetInfo``
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.info = ShardSetInfo.read(self.folder)
        if not self.info.complete:
            raise ShardError(
                f"{self.folder}: {len(self.info.shards)} of {self.info.num_shards} shards are finished "
                "(packing was interrupted); run the same pack command again to finish it"
            )
        self.table = _merge_tables(
            [self._load_table(index, keep_sources=False) for index in range(self.info.num_shards)]
        )
        self._source_table: tuple[int, dict[str, np.ndarray]] | None = None  # the last shard named
        counts = np.array([entry.crops for entry in self.info.shards], dtype=np.int64)
        self._first_row = np.concatenate([[0], np.cumsum(counts)])
        self._indices: dict[int, list[list[IndexEntry]]] = {}
        self._files: dict[int, int] = {}

    def _path(self, shard: int, suffix: str) -> Path:
        return self.folder / (self.info.shards[shard].name + suffix)

    def _load_table(self, shard: int, keep_sources: bool = True) -> dict[str, np.ndarray]:
        """Shard ``shard``'s record table, checked (ShardError naming the file); without its ``source`` /
        ``sources`` arrays unless ``keep_sources``."""
        path = self._path(shard, ".npz")
        try:
            with np.load(path, allow_pickle=False) as stored:
                table = {name: stored[name] for name in stored.files}
        except (OSError, ValueError) as err:
            raise ShardError(f"{path}: cannot read the record table ({err})") from err
        try:
            rows = check_record_table(table, str(path))
        except ValueError as err:
            raise ShardError(str(err)) from err
        if rows != self.info.shards[shard].crops:
            raise ShardError(
                f"{path}: {rows} rows, but shards.json says the shard stores {self.info.shards[shard].crops}"
            )
        if not keep_sources:
            del table["source"], table["sources"]
        return table

    def __len__(self) -> int:
        return int(self._first_row[-1])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"] = {}  # file descriptors are per process: a loader worker opens its own
        return state

    def close(self) -> None:
        for descriptor in self._files.values():
            os.close(descriptor)
        self._files = {}

    def locate(self, row: int) -> tuple[int, int]:
        """(shard, position within the shard) of ``row``."""
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} outside 0..{len(self) - 1}")
        shard = int(np.searchsorted(self._first_row, row, side="right")) - 1
        return shard, row - int(self._first_row[shard])

    def record(self, row: int) -> CropRecord:
        """Row ``row`` as the ``CropRecord`` it was packed from (its source read from its shard's table)."""
        shard, local = self.locate(row)
        if self._source_table is None or self._source_table[0] != shard:
            self._source_table = (shard, self._load_table(shard))
        return table_record(self._source_table[1], local)

    def _samples(self, shard: int) -> list[list[IndexEntry]]:
        if shard not in self._indices:
            samples = read_dali_index(self._path(shard, ".idx"))
            if len(samples) != self.info.shards[shard].crops:
                raise ShardError(
                    f"{self._path(shard, '.idx')}: {len(samples)} samples, but the shard stores "
                    f"{self.info.shards[shard].crops} crops"
                )
            self._indices[shard] = samples
        return self._indices[shard]

    def _descriptor(self, shard: int) -> int:
        if shard not in self._files:
            path = self._path(shard, ".tar")
            try:
                self._files[shard] = os.open(path, os.O_RDONLY)
            except OSError as err:
                raise ShardError(f"{path}: cannot open the shard ({err})") from err
        return self._files[shard]

    def where(self, row: int) -> str:
        """``row`` named for messages: "<folder>/<shard>.tar: record <key>"."""
        shard = self.info.shards[self.locate(row)[0]].name
        return f"{self.folder / shard}.tar: record {record_key(int(self.table['record'][row]))}"

    def jpeg(self, row: int) -> bytes:
        """The stored JPEG bytes of ``row``; ShardError naming the shard and the record when they cannot be
        read as the index says (the tar header at the indexed offset must name the crop's member)."""
        shard, local = self.locate(row)
        key = record_key(int(self.table["record"][row]))
        member = next((m for m in self._samples(shard)[local] if m.extension == IMAGE_EXTENSION), None)
        where = self.where(row)
        if member is None or member.name != f"{key}.{IMAGE_EXTENSION}":
            raise ShardError(f"{where}: the index lists {member.name if member else 'no image'} for it")
        descriptor = self._descriptor(shard)
        header = os.pread(descriptor, TAR_BLOCK, member.offset - TAR_BLOCK)
        if len(header) < TAR_BLOCK or _tar_header_member(header) != (member.name, member.size):
            found = _tar_header_member(header) if len(header) == TAR_BLOCK else "the end of the file"
            raise ShardError(
                f"{where}: the index says {member.name} ({member.size} bytes) at byte "
                f"{member.offset}, the tar has {found} there"
            )
        data = os.pread(descriptor, member.size, member.offset)
        if len(data) != member.size:
            raise ShardError(
                f"{where}: the tar ends after {len(data)} of the crop's {member.size} bytes (truncated)"
            )
        return data

    def image(self, row: int) -> np.ndarray:
        """``row``'s crop decoded with PIL: uint8 [H, W, 3] RGB; ShardError naming it when it does not
        decode."""
        return decode_jpeg(self.jpeg(row), self.where(row))

    def skipped(self) -> list[SkippedRecord]:
        """The records left out when the set was packed, shard by shard."""
        import json

        entries = []
        for shard in range(self.info.num_shards):
            path = self._path(shard, ".skipped.jsonl")
            if path.is_file():
                for line in path.read_text(encoding="utf-8").splitlines():
                    entries.append(SkippedRecord.from_dict(json.loads(line)))
        return entries


def decode_jpeg(data: bytes, where: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """JPEG (or any PIL image) bytes → uint8 [H, W, 3] RGB, resized (bilinear) to ``size`` = (height, width)
    when given and different; ShardError naming ``where`` when they do not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ShardError(f"{where}: the image does not decode ({err})") from err
    if size is not None and (rgb.height, rgb.width) != tuple(size):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.array(rgb)  # a writable copy (torch.from_numpy warns on PIL's read-only buffer)


class ShardCrops:
    """Chosen rows of a shard set as crops: what ``PretrainImageSet`` and ``CropViewSet`` read (the
    ``CropSource`` protocol, as a crop cache: ``height``, ``width``, ``num_rows``, ``rows`` and ``crop(i)``).

    rows:  [N] the shard-set rows used, item i = ``shards`` row ``rows[i]``
    size:  (height, width) every crop is resized to (bilinear) when it is stored at another size; None =
           each crop at its stored size (``height`` / ``width`` then give the size the set was packed at, 0
           when the set does not say)
    """

    def __init__(self, shards: CropShards, rows: np.ndarray, size: tuple[int, int] | None) -> None:
        self.shards, self.selected = shards, np.asarray(rows, dtype=np.int64)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        storage = shards.info.storage
        self.height, self.width = self.size or (int(storage.get("height", 0)), int(storage.get("width", 0)))
        self.rows = {
            name: shards.table[name][self.selected] for name in ("record", "camera", "tracklet", "pid")
        }

    @property
    def num_rows(self) -> int:
        return int(self.selected.shape[0])

    def crop(self, index: int) -> np.ndarray:
        """uint8 [H, W, 3] of item ``index`` (ShardError naming the shard and record when its JPEG cannot be
        read or decoded)."""
        row = int(self.selected[index])
        return decode_jpeg(self.shards.jpeg(row), self.shards.where(row), self.size)
