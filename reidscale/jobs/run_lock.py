"""One writer per run folder: an exclusive lock file, and no fresh run into a folder an earlier run filled.

A training run holds ``<run.output_dir>/<run.name>/.reidscale.lock`` for as long as it runs. The file is
created atomically (``O_CREAT | O_EXCL``) and holds ``{"host", "pid", "started"}`` (``started``: UTC,
ISO-8601); it is removed when the run ends, also on an exception. A second run started into the folder
meanwhile is refused with a ValueError naming the holder. A lock left behind by a process that is gone
(same host, ``os.kill(pid, 0)`` finds no such process) is taken over with a message naming the old holder;
a lock of another host is never taken over (its process cannot be checked from here).

A fresh run (``train.checkpoint.resume`` null) is also refused when the folder holds an earlier run:
``results.json`` (a finished run), the metrics file (``metrics.jsonl`` or ``tracking.jsonl_path``, which
the jsonl tracker appends to) or checkpoints (``checkpoints/`` or ``train.checkpoint.dir``). The message
names the way out: another ``run.name``, or ``train.checkpoint.resume=auto`` to continue that run.

Only global rank 0 touches the folder; under a process group it shares the outcome with the other ranks
(``broadcast_object_list``), so every rank raises the same ValueError.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reidscale.utils.dist import get_rank, get_world_size
from reidscale.utils.provenance import utc_timestamp

#: name of the lock file inside the run folder
LOCK_NAME = ".reidscale.lock"


def _holder_text(holder: dict[str, Any]) -> str:
    """``host <h>, pid <p>, started <t>`` of a lock file's content."""
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"


def _read_holder(lock_path: Path) -> dict[str, Any] | None:
    """The JSON object in ``lock_path``; None when the file is gone meanwhile.

    Raises:
        ValueError: the file does not hold a JSON object (a process died while writing it, or a stranger
            wrote it); the message says to remove it when no run is writing into the folder.
    """
    try:
        text = lock_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        holder = None
    if not isinstance(holder, dict):
        raise ValueError(
            f"the lock file {lock_path} does not hold a run's host/pid/start time ({text[:80]!r}); "
            "if no run is writing into that folder, remove the file and start again"
        )
    return holder


def _process_is_gone(holder: dict[str, Any]) -> bool:
    """True when ``holder`` ran on this host and its pid names no process any more."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def _create_lock(lock_path: Path) -> bool:
    """Create ``lock_path`` holding this process's host, pid and start time; False when it exists."""
    try:
        fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": utc_timestamp()}
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(holder) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return True


def acquire_run_lock(run_dir: str | Path) -> Path:
    """Take the lock of ``run_dir`` (created when missing) for this process; returns the lock file's path.

    Raises:
        ValueError: another live run holds the lock (the message names the folder and the holder's host,
            pid and start time), or the lock file is unreadable.
    """
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_NAME
    for _ in range(3):  # a holder that releases or a stale lock taken over meanwhile: try again
        if _create_lock(lock_path):
            return lock_path
        holder = _read_holder(lock_path)
        if holder is None:
            continue
        if not _process_is_gone(holder):
            raise ValueError(
                f"another run is writing into {folder} ({_holder_text(holder)}; lock file {lock_path}); "
                "choose another run.name, or wait for that run to end"
            )
        if _read_holder(lock_path) != holder:  # someone else took it over first
            continue
        print(
            f"reidscale: taking over the stale lock of {folder} left by a process that is gone "
            f"({_holder_text(holder)})",
            file=sys.stderr,
            flush=True,
        )
        lock_path.unlink(missing_ok=True)
    raise ValueError(f"could not take the lock {lock_path}: other runs keep taking it; start again")


def release_run_lock(lock_path: str | Path) -> None:
    """Remove ``lock_path`` if this process still holds it (a lock taken over by another run is kept)."""
    path = Path(lock_path)
    try:
        holder = _read_holder(path)
    except ValueError:
        return
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` inside the block (released on exit, also on an exception).

    Raises:
        ValueError: as ``acquire_run_lock``.
    """
    lock_path = acquire_run_lock(run_dir)
    try:
        yield lock_path
    finally:
        release_run_lock(lock_path)


def earlier_run_files(run_dir: Path, metrics_path: Path, checkpoint_dir: Path) -> list[str]:
    """What in ``run_dir`` shows an earlier run: ``results.json``, the metrics file, a non-empty checkpoint
    folder (names relative to ``run_dir`` where they lie below it); empty when there is none."""

    def shown(path: Path) -> str:
        return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)

    found = [shown(path) for path in (run_dir / "results.json", metrics_path) if path.is_file()]
    if checkpoint_dir.is_dir() and any(checkpoint_dir.iterdir()):
        found.append(shown(checkpoint_dir) + "/")
    return found


def check_fresh_run_folder(
    run_dir: Path, resume: str | None, metrics_path: Path, checkpoint_dir: Path
) -> None:
    """Refuse a fresh run (``resume`` None) into ``run_dir`` when it holds an earlier run's files.

    Raises:
        ValueError: ``results.json`` exists ("holds a finished run"), or the metrics file or checkpoints
            do ("holds an earlier run"); the message names the files and the options to use instead.
    """
    if resume is not None:
        return
    found = earlier_run_files(run_dir, metrics_path, checkpoint_dir)
    if not found:
        return
    kind = "a finished run" if "results.json" in found else "an earlier run"
    raise ValueError(
        f"{run_dir} holds {kind} ({', '.join(found)}); choose another run.name, or set "
        "train.checkpoint.resume=auto to continue it"
    )


def _share_from_rank0(error: str | None) -> str | None:
    """Rank 0's ``error`` on every rank of an initialised process group (unchanged without one)."""
    import torch.distributed as torch_dist

    if not (torch_dist.is_available() and torch_dist.is_initialized()) or get_world_size() == 1:
        return error
    shared = [error]
    torch_dist.broadcast_object_list(shared, src=0)
    return shared[0]


@contextmanager
def claim_run_folder(config: Any) -> Iterator[Path]:
    """The run folder ``<run.output_dir>/<run.name>`` of a training command's resolved ``config``, held
    by this run inside the block: rank 0 takes its lock and checks a fresh run does not reuse it.

    Every rank enters and leaves together: a refusal on rank 0 is raised on every rank.

    Raises:
        ValueError: another run holds the folder, or a fresh run would reuse an earlier run's folder.
    """
    run_dir = Path(config.run.output_dir) / config.run.name
    if get_rank() != 0:
        error = _share_from_rank0(None)
        if error is not None:
            raise ValueError(error)
        yield run_dir
        return
    checkpoint = config.train.checkpoint
    metrics_path = Path(config.tracking.jsonl_path or run_dir / "metrics.jsonl")
    checkpoint_dir = Path(checkpoint.dir) if checkpoint.dir else run_dir / "checkpoints"
    lock_path: Path | None = None
    created = _missing_folders(run_dir)
    try:
        lock_path = acquire_run_lock(run_dir)
        check_fresh_run_folder(run_dir, checkpoint.resume, metrics_path, checkpoint_dir)
    except ValueError as refusal:
        if lock_path is not None:
            release_run_lock(lock_path)
        _share_from_rank0(str(refusal))
        raise
    try:
        _share_from_rank0(None)
        yield run_dir
    finally:
        release_run_lock(lock_path)
        _remove_if_empty(created)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders this run created, deepest first, as long as they are empty: a run refused or
    failed before it wrote anything leaves nothing behind."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (the run wrote something) or already gone
            return
