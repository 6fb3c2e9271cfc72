"""Packing a manifest's crops into a crop shard set: ``pack_manifest`` (what ``reidscale pack`` runs).

What is stored per record:

- an image record that is a whole JPEG (``frame == -1``, box ``WHOLE_IMAGE``: a .jpg/.jpeg file, or an
  LMDB value holding a JPEG) is copied into its shard byte for byte, after a structural check
  (``PIL.Image.verify``): no re-encoding, so no second loss (LUPerson-NL, CION-AL, Market-style JPEG
  folders); an LMDB value in another image format is treated as below;
- every other record (a box in a video frame, a box inside an image, a PNG) is decoded once
  (``decode_crops``: DALI or PyAV for videos, PIL for images), resized to ``size`` (height, width) and
  JPEG-encoded at ``quality``.

Records that cannot be read are skipped and named (shard by shard, ``<shard>.skipped.jsonl``) or, with
``strict``, stop the pack with an error naming the record. The set is written shard by shard
(``ShardSetWriter``): an interrupted pack is finished by running it again with the same arguments.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reidscale.data.decode.crops import UNREADABLE_IMAGE, decode_crops
from reidscale.data.decode.stats import DecodeStats
from reidscale.data.image_bytes import read_image_bytes, split_lmdb_reference
from reidscale.data.records import WHOLE_IMAGE, CropRecord, Manifest, SkippedRecord
from reidscale.data.shards.layout import ShardError
from reidscale.data.shards.writer import PackedCrop, ShardSetWriter
from reidscale.data.video_probe import VideoInfo

JPEG_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg")
DEFAULT_SIZE: tuple[int, int] = (256, 128)
DEFAULT_QUALITY = 95
DEFAULT_RECORDS_PER_SHARD = 1000


def is_copied(record: CropRecord) -> bool:
    """True when ``record`` is a whole JPEG image, stored as it is: a .jpg/.jpeg file, or an LMDB value
    (``reidscale.data.image_bytes``; LUPerson-NL's LMDB holds the JPEG files' bytes)."""
    if record.is_video or record.box != WHOLE_IMAGE:
        return False
    return record.source.lower().endswith(JPEG_SUFFIXES) or split_lmdb_reference(record.source) is not None


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """uint8 [H, W, 3] RGB → baseline JPEG bytes (PIL, 4:2:0 chroma subsampling)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _whole_jpeg(source: str) -> bytes | bool:
    """The JPEG bytes ``source`` names (a file or an LMDB value: ``read_image_bytes``) when they are a
    structurally sound JPEG; True when they are a sound image in another format (to be re-encoded), False
    when they are missing or not a sound image."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = read_image_bytes(source)
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            image.verify()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False
    return data if image_format == "JPEG" else True


def records_fingerprint(records: Sequence[CropRecord]) -> str:
    """SHA-256 of every field of every record, in order (what a resumed pack must see again)."""
    digest = hashlib.sha256()
    for record in records:
        fields = (
            record.source,
            record.frame,
            *record.box,
            record.pid,
            record.camera,
            record.video,
            record.tracklet,
        )
        digest.update(("\x1f".join(str(value) for value in fields) + "\x1e").encode())
    return digest.hexdigest()


@dataclass
class PackSettings:
    """How ``pack_manifest`` stores crops and decodes videos (see the module doc)."""

    size: tuple[int, int] = DEFAULT_SIZE
    quality: int = DEFAULT_QUALITY
    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD
    decode_backend: str = "auto"
    decode_device: str = "cpu"
    num_threads: int = 1
    strict: bool = False

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (height, width) of positive pixels, got {self.size}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must lie in 1..100, got {self.quality}")
        if self.records_per_shard < 1 or self.num_threads < 1:
            raise ValueError("records_per_shard and num_threads must be >= 1")

    @property
    def storage(self) -> dict[str, object]:
        """The ``storage`` entry of ``shards.json``."""
        height, width = self.size
        return {"encoding": "jpeg", "height": height, "width": width, "quality": self.quality,
                "whole_jpeg_images": "copied"}  # fmt: skip


@dataclass
class PackReport:
    """What a pack did: manifest records, crops stored, skips by reason, shard bytes, shards written now."""

    folder: Path
    records: int
    crops: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    tar_bytes: int = 0
    shards_written: int = 0
    shards_resumed: int = 0
    seconds: float = 0.0

    @property
    def bytes_per_crop(self) -> float:
        return self.tar_bytes / self.crops if self.crops else float("nan")

    def summary(self) -> str:
        skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items())) or "none"
        per_crop = self.bytes_per_crop / 1024
        return (
            f"packed {self.records} records into {self.folder}: {self.crops} crops, skipped {skipped}; "
            f"{self.tar_bytes / 2**20:.1f} MiB, {per_crop:.1f} KiB per crop (JPEG + metadata); "
            f"{self.shards_written} shards written now, {self.shards_resumed} found finished; "
            f"{self.seconds:.1f} s"
        )


def _shard_crops(
    records: Sequence[CropRecord],
    positions: Sequence[int],
    settings: PackSettings,
    video_cache: dict[str, VideoInfo],
) -> tuple[list[PackedCrop], list[SkippedRecord]]:
    """The stored crops of one shard's records (by position) and the records left out (``video_cache``:
    the videos probed so far, shared by the shards)."""
    crops, skipped, handled = [], [], set()
    for i in (i for i, record in enumerate(records) if is_copied(record)):
        data = _whole_jpeg(records[i].source)
        if data is False:
            skipped.append(SkippedRecord(records[i].source, positions[i], UNREADABLE_IMAGE))
        elif data is not True:  # a sound image in another format (e.g. a PNG in an LMDB) is re-encoded
            crops.append(PackedCrop(positions[i], records[i], data))
        if data is not True:
            handled.add(i)
    decoded = [i for i in range(len(records)) if i not in handled]
    stats = DecodeStats()
    subset = [records[i] for i in decoded]
    for rows, batch in decode_crops(
        subset,
        settings.size,
        stats,
        settings.decode_backend,
        settings.decode_device,
        settings.num_threads,
        video_cache,
    ):
        for row, pixels in zip(rows.tolist(), batch, strict=True):
            i = decoded[row]
            crops.append(PackedCrop(positions[i], records[i], encode_jpeg(pixels, settings.quality)))
    skipped += [
        SkippedRecord(entry.file, positions[decoded[entry.record]], entry.reason)
        for entry in stats.skipped_records
    ]
    crops.sort(key=lambda crop: crop.position)
    skipped.sort(key=lambda entry: entry.record)
    return crops, skipped


def pack_manifest(
    manifest: Manifest,
    out: str | os.PathLike,
    source: dict[str, object],
    settings: PackSettings | None = None,
    log: Callable[[str], None] = print,
) -> PackReport:
    """Pack ``manifest``'s records into the shard set ``out`` (resuming one started with the same manifest
    and settings); ``source`` names what was packed (kind, path) in ``shards.json``. ``log`` gets one line
    per shard (crops, rate, time left) and the summary.

    Raises:
        ShardError: ``out`` holds another set, or (``settings.strict``) a record cannot be read.
    """
    settings = settings or PackSettings()
    started = time.monotonic()
    identity = {
        **source,
        "records": len(manifest.records),
        "fingerprint": records_fingerprint(manifest.records),
    }
    writer = ShardSetWriter(
        out, len(manifest.records), settings.records_per_shard, settings.storage, identity
    )
    report = PackReport(Path(out), len(manifest.records), shards_resumed=len(writer.info.shards))
    for entry in writer.info.shards:
        report.crops += entry.crops
        report.tar_bytes += entry.tar_bytes
        for reason, count in entry.skipped.items():
            report.skipped[reason] = report.skipped.get(reason, 0) + count
    pending, written = writer.pending(), 0
    video_cache: dict[str, VideoInfo] = {}  # a video spanning shards is probed once
    for done, index in enumerate(pending, start=1):
        positions = list(writer.info.shard_range(index))
        crops, skipped = _shard_crops(
            [manifest.records[p] for p in positions], positions, settings, video_cache
        )
        if skipped and settings.strict:
            first = skipped[0]
            raise ShardError(
                f"record {first.record} ({first.file}) cannot be packed: {first.reason} "
                f"({len(skipped)} such records in shard {index}; without strict they are skipped)"
            )
        entry = writer.add(index, crops, skipped)
        report.crops += entry.crops
        report.tar_bytes += entry.tar_bytes
        report.shards_written += 1
        for reason, count in entry.skipped.items():
            report.skipped[reason] = report.skipped.get(reason, 0) + count
        written += entry.crops
        elapsed = time.monotonic() - started
        left = elapsed / done * (len(pending) - done)
        log(
            f"pack: shard {index + 1}/{writer.info.num_shards}: {entry.crops} crops of {entry.records} "
            f"records, {entry.tar_bytes / entry.crops / 1024 if entry.crops else 0:.1f} KiB each; "
            f"{written / max(elapsed, 1e-9):.0f} crops/s; about {left:.0f} s left"
        )
    report.seconds = time.monotonic() - started
    log(report.summary())
    return report
