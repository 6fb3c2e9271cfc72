"""Read a wandb run back from its binary record log ``run-<id>.wandb``, without wandb's servers.

File format (written by wandb-core; wandb's Python reader is gone from 0.31, so it is parsed here):
a 7-byte file header ``b":W&B"``, uint16 magic ``0xBEE1`` (little endian), uint8 version 0, then a
LevelDB-style log. The file is cut into 32 KiB blocks (the file header sits at the start of block 0);
each block holds chunks ``<crc32: uint32 LE> <length: uint16 LE> <kind: uint8> <payload: length bytes>``,
where kind 1 is a whole record, 2/3/4 the first/middle/last piece of a record split across blocks, and
a block tail shorter than a chunk header is zero padding. The CRC is zlib's CRC-32 of the payload seeded
with the CRC-32 of the kind byte. Each reassembled record is a ``wandb.proto.wandb_internal_pb2.Record``.

A chunk or record cut off at the end of the file (the process died mid-write) ends the read quietly;
every other inconsistency (bad header, CRC mismatch, a piece out of order) raises ValueError.
"""

from __future__ import annotations

import itertools
import json
import struct
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from reidscale.tracking.wandb_tracker import import_wandb

BLOCK_SIZE = 32 * 1024
FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
FILE_IDENT, FILE_MAGIC, FILE_VERSION = b":W&B", 0xBEE1, 0
KIND_FULL, KIND_FIRST, KIND_MIDDLE, KIND_LAST = 1, 2, 3, 4
_KIND_SEED = {kind: zlib.crc32(bytes([kind])) for kind in (KIND_FULL, KIND_FIRST, KIND_MIDDLE, KIND_LAST)}


def find_offline_run(wandb_dir: str | Path) -> Path:
    """The ``run-<id>.wandb`` file of the most recently written offline run under ``wandb_dir``.

    ``wandb_dir`` may be the ``wandb`` folder itself or the folder given to ``wandb.init(dir=...)``.
    """
    root = Path(wandb_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"wandb_dir is not a directory: {root}")
    candidates = [
        path
        for base in (root, root / "wandb")
        for path in base.glob("offline-run-*/run-*.wandb")
        if path.is_file()
    ]
    if not candidates:
        raise FileNotFoundError(
            f"no offline wandb run (offline-run-*/run-*.wandb) in {root} or {root / 'wandb'}"
        )
    return max(candidates, key=lambda path: (path.stat().st_mtime_ns, str(path)))


def _resolve_record_file(run_dir_or_file: str | Path) -> Path:
    path = Path(run_dir_or_file)
    if path.is_file():
        return path
    if path.is_dir():
        own_logs = sorted(path.glob("run-*.wandb"))
        if len(own_logs) == 1:
            return own_logs[0]
        if len(own_logs) > 1:
            raise ValueError(f"run folder {path} holds several record logs: {[p.name for p in own_logs]}")
        return find_offline_run(path)
    raise FileNotFoundError(f"wandb run file or folder not found: {path}")


def _check_file_header(header: bytes, path: Path) -> None:
    if len(header) < FILE_HEADER.size:
        raise ValueError(f"{path} is too short to be a wandb record log ({len(header)} bytes)")
    ident, magic, version = FILE_HEADER.unpack_from(header)
    if ident != FILE_IDENT or magic != FILE_MAGIC or version != FILE_VERSION:
        raise ValueError(
            f"{path} is not a wandb record log: header {header[: FILE_HEADER.size]!r}, expected "
            f"{FILE_IDENT!r} + magic {FILE_MAGIC:#06x} + version {FILE_VERSION}"
        )


def _iter_chunks(path: Path, first_block: int = 0) -> Iterator[tuple[int, bytes]]:
    """(kind, payload) of every CRC-checked chunk from block ``first_block`` on, in file order."""
    with open(path, "rb") as handle:
        _check_file_header(handle.read(FILE_HEADER.size), path)
        handle.seek(first_block * BLOCK_SIZE)
        block_index = first_block
        while block := handle.read(BLOCK_SIZE):
            pos = FILE_HEADER.size if block_index == 0 else 0
            while len(block) - pos >= CHUNK_HEADER.size:
                crc, length, kind = CHUNK_HEADER.unpack_from(block, pos)
                if crc == 0 and length == 0 and kind == 0:
                    break
                where = f"{path}: chunk at byte {block_index * BLOCK_SIZE + pos}"
                end = pos + CHUNK_HEADER.size + length
                if end > len(block):
                    if len(block) < BLOCK_SIZE:
                        return
                    raise ValueError(f"{where} runs past the end of its {BLOCK_SIZE}-byte block")
                if kind not in _KIND_SEED:
                    raise ValueError(f"{where} has unknown kind {kind}")
                payload = block[pos + CHUNK_HEADER.size : end]
                if zlib.crc32(payload, _KIND_SEED[kind]) != crc:
                    raise ValueError(f"{where} fails its CRC check")
                yield kind, payload
                pos = end
            block_index += 1


def iter_record_payloads(path: str | Path, first_block: int = 0) -> Iterator[bytes]:
    """The serialised records of a ``run-<id>.wandb`` file, pieces of split records joined.

    first_block > 0 reads only the records that start in that block or later (the pieces of a record
    begun in an earlier block are passed over).
    """
    file_path = Path(path)
    pending: bytearray | None = None
    chunks = _iter_chunks(file_path, first_block)
    if first_block > 0:  # pass over the tail of a record that began before first_block
        chunks = itertools.dropwhile(lambda chunk: chunk[0] not in (KIND_FULL, KIND_FIRST), chunks)
    for kind, payload in chunks:
        if kind in (KIND_FULL, KIND_FIRST):
            if pending is not None:
                raise ValueError(f"{file_path}: a record starts before the previous split record ended")
            if kind == KIND_FULL:
                yield payload
            else:
                pending = bytearray(payload)
        else:
            if pending is None:
                raise ValueError(f"{file_path}: a middle/last record piece without its first piece")
            pending.extend(payload)
            if kind == KIND_LAST:
                yield bytes(pending)
                pending = None


def iter_wandb_records(run_dir_or_file: str | Path) -> Iterator[Any]:
    """Every ``wandb_internal_pb2.Record`` of a run (a record log, a run folder, or a wandb folder)."""
    import_wandb()
    from wandb.proto import wandb_internal_pb2

    for payload in iter_record_payloads(_resolve_record_file(run_dir_or_file)):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def log_is_closed(record_file: str | Path) -> bool:
    """Whether wandb-core has finished writing ``record_file``: its exit record is on disk.

    wandb-core keeps the newest (partial) 32 KiB block of the log in memory and writes it when it closes
    the run's stream, which happens after ``run.finish()`` has returned. The exit record is the last
    record a finished run writes, so once it can be read back every record is on disk. Only the last two
    blocks are read (the exit record is small and lies in them), so the check costs the same for any log.
    """
    import_wandb()
    from wandb.proto import wandb_internal_pb2

    path = Path(record_file)
    size = path.stat().st_size if path.is_file() else 0
    if size < FILE_HEADER.size:  # created, nothing written yet
        return False
    first_block = max(0, (size - 1) // BLOCK_SIZE - 1)
    for payload in iter_record_payloads(path, first_block):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "exit":
            return True
    return False


def wait_for_closed_log(record_file: str | Path, timeout_s: float = 600.0, poll_s: float = 0.02) -> bool:
    """Wait until ``log_is_closed(record_file)``; True when it is, False (with a warning naming the file)
    when ``timeout_s`` passed first, which only a stalled or killed wandb-core service causes."""
    deadline = time.monotonic() + timeout_s
    while not log_is_closed(record_file):
        if time.monotonic() >= deadline:
            warnings.warn(
                f"wandb has not finished writing {record_file} within {timeout_s:.0f} s of run.finish(); "
                "its last records may be missing",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        time.sleep(poll_s)
    return True


def _item_path(item: Any) -> Sequence[str]:
    path = [item.key] if item.key else list(item.nested_key)
    if not path:
        raise ValueError(f"wandb record item without a key: {item!r}")
    return path


def _item_value(item: Any) -> Any:
    """The value of a history/config item: its typed form when set, else its ``value_json``."""
    typed = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if typed == "none":
        return None
    if typed == "json":
        return json.loads(item.json)
    if typed is not None:
        return getattr(item, typed)
    return json.loads(item.value_json)


def _set_nested(target: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def read_wandb_history(run_dir_or_file: str | Path) -> list[dict[str, Any]]:
    """One dict per history row, in order: logged keys (nested dicts rebuilt) plus wandb's ``_step``,
    ``_timestamp`` and ``_runtime``. Media such as images appear as wandb's JSON description of the file.

    Values are exact when the run stored typed history values (WandbTracker turns that on). From the JSON
    text alone, which wandb-core re-encodes, integral floats read back as ints (``1.0`` → ``1``) and
    ``-0.0`` as ``0``; all other numbers still read back exactly. wandb keeps ints only within int64:
    a larger int comes back as the nearest float.
    """
    rows: list[dict[str, Any]] = []
    for record in iter_wandb_records(run_dir_or_file):
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            _set_nested(row, _item_path(item), _item_value(item))
        if "_step" not in row and record.history.HasField("step"):
            row["_step"] = record.history.step.num
        rows.append(row)
    return rows


def read_wandb_config(run_dir_or_file: str | Path) -> dict[str, Any]:
    """The run config: the one given to ``wandb.init`` with later updates/removals applied; wandb's own
    ``_wandb`` entry is left out."""
    config: dict[str, Any] = {}
    for record in iter_wandb_records(run_dir_or_file):
        kind = record.WhichOneof("record_type")
        if kind not in ("run", "config"):
            continue
        config_record = record.run.config if kind == "run" else record.config
        for item in config_record.update:
            _set_nested(config, _item_path(item), _item_value(item))
        for item in config_record.remove:
            parent = config
            *parents, last = _item_path(item)
            for key in parents:
                parent = parent.get(key, {})
            parent.pop(last, None)
    config.pop("_wandb", None)
    return config


def read_wandb_run_info(run_dir_or_file: str | Path) -> dict[str, Any]:
    """Identity of a run from its first run record: run_id, project, entity, name, group, tags."""
    for record in iter_wandb_records(run_dir_or_file):
        if record.WhichOneof("record_type") == "run":
            run = record.run
            return {
                "run_id": run.run_id,
                "project": run.project,
                "entity": run.entity,
                "name": run.display_name,
                "group": run.run_group,
                "tags": list(run.tags),
            }
    raise ValueError(f"no run record in {run_dir_or_file}")
