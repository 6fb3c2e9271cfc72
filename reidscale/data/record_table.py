"""Per-crop metadata as numpy arrays, one row per stored crop: the table kept beside a crop cache and beside
each crop shard, so a sampler reads identities and cameras without opening a single image.

Arrays (N rows)::

    record    int64 [N]     position of the crop's record in the manifest records it was made from
    camera    int64 [N]     tracklet  int64 [N]     pid  int64 [N]     frame  int64 [N]
    box       int64 [N, 4]  (x, y, w, h) in the source frame / image
    source    int32 [N]     index into ``sources`` (str [S], sorted)
    video     int32 [N]     index into ``videos``  (str [V], sorted)

Saved with ``np.savez`` and read with ``np.load(allow_pickle=False)``: strings are fixed-width unicode
arrays, so reading a table runs no code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reidscale.data.records import CropRecord

ROW_FIELDS: tuple[str, ...] = ("record", "camera", "tracklet", "pid", "frame", "box", "source", "video")
STRING_TABLES: tuple[str, ...] = ("sources", "videos")


def record_table(records: Sequence[CropRecord], positions: Sequence[int]) -> dict[str, np.ndarray]:
    """The table of ``records`` (the stored crops, in storage order); ``positions[i]`` is record i's position
    in the manifest records."""
    if len(records) != len(positions):
        raise ValueError(f"{len(records)} records but {len(positions)} positions")
    sources = sorted({record.source for record in records})
    videos = sorted({record.video for record in records})
    source_id = {name: i for i, name in enumerate(sources)}
    video_id = {name: i for i, name in enumerate(videos)}
    return {
        "record": np.asarray(positions, dtype=np.int64).reshape(-1),
        "camera": np.array([r.camera for r in records], dtype=np.int64),
        "tracklet": np.array([r.tracklet for r in records], dtype=np.int64),
        "pid": np.array([r.pid for r in records], dtype=np.int64),
        "frame": np.array([r.frame for r in records], dtype=np.int64),
        "box": np.array([r.box for r in records], dtype=np.int64).reshape(-1, 4),
        "source": np.array([source_id[r.source] for r in records], dtype=np.int32),
        "video": np.array([video_id[r.video] for r in records], dtype=np.int32),
        "sources": np.array(sources, dtype=str),
        "videos": np.array(videos, dtype=str),
    }


def check_record_table(arrays: dict[str, np.ndarray], where: str) -> int:
    """The number of rows of ``arrays``; ValueError naming ``where`` and the field when a field is missing,
    has another length or shape, or a string index falls outside its table."""
    missing = [name for name in (*ROW_FIELDS, *STRING_TABLES) if name not in arrays]
    if missing:
        expected = [*ROW_FIELDS, *STRING_TABLES]
        raise ValueError(f"{where}: the record table lacks {missing} (expected {expected})")
    rows = int(arrays["record"].shape[0])
    for name in ROW_FIELDS:
        shape, expected_shape = tuple(arrays[name].shape), (rows, 4) if name == "box" else (rows,)
        if shape != expected_shape:
            raise ValueError(f"{where}: field {name!r} has shape {shape}, expected {expected_shape}")
    for index, table in (("source", "sources"), ("video", "videos")):
        ids = arrays[index]
        if rows and (int(ids.min()) < 0 or int(ids.max()) >= len(arrays[table])):
            raise ValueError(f"{where}: field {index!r} points outside its {len(arrays[table])} {table}")
    return rows


def table_record(arrays: dict[str, np.ndarray], row: int) -> CropRecord:
    """Row ``row`` of the table as a CropRecord (its ``pid`` is the stored one)."""
    x, y, w, h = (int(v) for v in arrays["box"][row])
    return CropRecord(
        source=str(arrays["sources"][arrays["source"][row]]),
        frame=int(arrays["frame"][row]),
        box=(x, y, w, h),
        pid=int(arrays["pid"][row]),
        camera=int(arrays["camera"][row]),
        video=str(arrays["videos"][arrays["video"][row]]),
        tracklet=int(arrays["tracklet"][row]),
    )
