"""File helpers (reidscale.utils.io): atomic writes (the old file or the whole new one, never a part; usual
permissions) and a file's SHA-256."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from reidscale.utils.io import atomic_write, atomic_write_json, atomic_write_text, file_sha256


def test_writes_creates_parents_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.json"
    assert atomic_write_json(target, {"mAP": 0.5, "cmc": [1, 2]}) == target
    assert json.loads(target.read_text()) == {"mAP": 0.5, "cmc": [1, 2]}
    atomic_write_text(target, "second\n")
    assert target.read_text() == "second\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]  # no temporary file left


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "weights.pt"
    target.write_bytes(b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"new but cut")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_permissions_are_those_of_a_plain_open(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "atomic.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask


def test_file_sha256_equals_hashlib_over_the_whole_file_across_blocks(tmp_path: Path) -> None:
    payload = bytes(range(256)) * ((1 << 22) // 256 + 3)  # a little more than one 4 MiB block
    (tmp_path / "big").write_bytes(payload)
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "big") == hashlib.sha256(payload).hexdigest()
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
