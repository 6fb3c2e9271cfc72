"""The encoded bytes of an image record, whatever holds them: ``read_image_bytes(source)``.

An image record's ``CropRecord.source`` names its image in one of two ways:

- a file path: the bytes are the file's content;
- an LMDB reference ``"<lmdb folder>::<key>"``: the bytes are the value stored under ``key`` (its UTF-8
  encoding; LUPerson-NL's keys are ASCII) in the LMDB environment whose ``data.mdb`` lies in ``<lmdb folder>``
  (an absolute path). ``lmdb_reference(folder, key)`` builds one, ``split_lmdb_reference`` takes one apart.

A source is an LMDB reference only when it holds ``::`` and the part before the first ``::`` is a folder
holding ``data.mdb``; anything else is a file path, so an image file whose path happens to contain ``::``
still reads as a file. Keys may contain ``::`` (only the first one separates).

LMDB environments are opened once per process and folder, read-only and without the lock file
(``lock=False``: nothing may write to the database while it is read), and shared by the threads of that
process; a forked child (a DataLoader worker) opens its own. The ``lmdb`` package is imported only when an
LMDB is first opened.

Failures are ``OSError``s, as for a file: a missing file raises what ``open`` raises, a missing key or an
LMDB that cannot be opened raises ``ImageSourceError`` naming the folder and key.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

LMDB_SEPARATOR = "::"
LMDB_DATA_FILE = "data.mdb"

_environments: dict[tuple[int, str], Any] = {}
_environments_lock = threading.Lock()


class ImageSourceError(OSError):
    """The bytes an image source names cannot be read (missing LMDB key, unreadable LMDB); the message names
    the source."""


def lmdb_reference(folder: str | os.PathLike, key: str) -> str:
    """The ``CropRecord.source`` of the value under ``key`` in the LMDB at ``folder`` (made absolute)."""
    return f"{os.path.abspath(os.fspath(folder))}{LMDB_SEPARATOR}{key}"


def is_lmdb_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds an LMDB environment (its ``data.mdb``)."""
    return os.path.isfile(os.path.join(os.fspath(folder), LMDB_DATA_FILE))


def split_lmdb_reference(source: str) -> tuple[str, str] | None:
    """``(lmdb folder, key)`` when ``source`` is an LMDB reference (see the module doc), else None."""
    folder, separator, key = source.partition(LMDB_SEPARATOR)
    if not separator or not folder or not key:
        return None
    if (os.getpid(), folder) in _environments or is_lmdb_folder(folder):
        return folder, key
    return None


def open_lmdb(folder: str | os.PathLike) -> Any:
    """The read-only ``lmdb.Environment`` of ``folder``, opened once per process (see the module doc).

    Raises:
        ImportError: the ``lmdb`` package is not installed.
        ImageSourceError: ``folder`` holds no LMDB or it cannot be opened.
    """
    path = os.path.abspath(os.fspath(folder))
    cache_key = (os.getpid(), path)
    environment = _environments.get(cache_key)
    if environment is not None:
        return environment
    try:
        import lmdb
    except ImportError as err:
        raise ImportError(
            f"reading the LMDB {path} needs the 'lmdb' package: pip install lmdb (or the 'data' extra)"
        ) from err
    with _environments_lock:
        environment = _environments.get(cache_key)
        if environment is None:
            if not is_lmdb_folder(path):
                raise ImageSourceError(f"{path} is not an LMDB folder (it holds no {LMDB_DATA_FILE})")
            try:
                environment = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False)
            except lmdb.Error as err:
                raise ImageSourceError(f"{path}: the LMDB cannot be opened read-only ({err})") from err
            _environments[cache_key] = environment
    return environment


def close_lmdb_environments() -> None:
    """Close every LMDB this process opened (they are reopened on the next read)."""
    with _environments_lock:
        mine = [key for key in _environments if key[0] == os.getpid()]
        for key in mine:
            _environments.pop(key).close()
        _environments.clear()  # inherited handles of a parent process are dropped, not closed


def read_lmdb_value(folder: str | os.PathLike, key: str) -> bytes:
    """The bytes stored under ``key`` in the LMDB at ``folder``; ImageSourceError when the key is absent."""
    environment = open_lmdb(folder)
    import lmdb  # imported by open_lmdb

    try:
        with environment.begin(write=False) as transaction:
            value = transaction.get(key.encode("utf-8"))
    except lmdb.Error as err:
        message = f"{os.fspath(folder)}: reading key {key!r} from the LMDB failed ({err})"
        raise ImageSourceError(message) from err
    if value is None:
        raise ImageSourceError(f"{os.fspath(folder)}: the LMDB has no key {key!r}")
    return bytes(value)


def read_image_bytes(source: str) -> bytes:
    """The encoded image bytes ``source`` names: an LMDB value or a file's content (module doc)."""
    reference = split_lmdb_reference(source)
    if reference is not None:
        return read_lmdb_value(*reference)
    return Path(source).read_bytes()


def image_source_exists(source: str) -> bool:
    """True when ``source`` names bytes that exist: a file, or a key present in its LMDB."""
    reference = split_lmdb_reference(source)
    if reference is None:
        return os.path.isfile(source)
    folder, key = reference
    with open_lmdb(folder).begin(write=False) as transaction:
        return cursor_has_key(transaction.cursor(), key)


def cursor_has_key(cursor: Any, key: str) -> bool:
    """True when the LMDB of ``cursor`` (an ``lmdb.Cursor``) holds ``key``; a key LMDB cannot hold (empty,
    longer than its key size limit) is absent."""
    import lmdb

    try:
        return bool(cursor.set_key(key.encode("utf-8")))
    except lmdb.Error:
        return False
