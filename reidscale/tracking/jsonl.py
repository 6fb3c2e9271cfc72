"""JSON-lines tracker: one JSON object per call, appended to a file and flushed at once.

Line kinds (a reader tells them apart by their reserved keys):
``{"step": 120, "time": 1795287351.2, "loss": 1.2345, ...}``          one per ``log`` call
``{"time": ..., "config": {...}}``                                    one per ``log_config`` call
``{"step": 3, "time": ..., "image": {"key": ..., "path": ..., "caption": ...}}``   one per ``log_image``

``time`` is Unix seconds. Numbers are written with Python's shortest round-trip repr, so reading a line
back gives exactly the float or int that was logged (ints stay ints, ``0.1 + 0.2`` stays
``0.30000000000000004``). **NaN and ±inf are written as ``null``**: the file stays strict JSON that any
parser (jq, pandas, browsers) reads; a diverged value shows up as a gap and its exact kind is on the
console. Each line is flushed to the operating system right away, so a crash of the process loses nothing
already logged; ``fsync=True`` also survives a machine crash at the price of a disk sync per line.
A run resumed with the same path appends to the same file.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reidscale.tracking.base import MetricValue, Tracker

#: keys that structure a line and therefore cannot be metric names
RESERVED_KEYS: frozenset[str] = frozenset({"step", "time", "config", "image"})


def json_safe(value: Any) -> Any:
    """Copy of a plain nested value (dicts, lists, scalars) with non-finite floats replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value


class JsonlTracker(Tracker):
    """Appends to the JSON-lines file ``path`` (parent folders are created)."""

    def __init__(
        self, path: str | Path, config: Mapping[str, Any] | None = None, fsync: bool = False
    ) -> None:
        super().__init__()
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"jsonl path must be a file, got the directory {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open until finish()
        if config is not None:
            self.log_config(config)

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(json_safe(record), allow_nan=False, separators=(",", ":"))
        self._file.write(line + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def _write_metrics(self, metrics: dict[str, MetricValue], step: int) -> None:
        clashing = sorted(RESERVED_KEYS.intersection(metrics))
        if clashing:
            raise ValueError(
                f"metric names {clashing} clash with the keys the jsonl format reserves "
                f"({sorted(RESERVED_KEYS)}); rename them, e.g. 'time/iter'"
            )
        self._append({"step": step, "time": time.time(), **metrics})

    def _write_config(self, config: dict[str, Any]) -> None:
        self._append({"time": time.time(), "config": config})

    def _write_image(self, key: str, path: Path, step: int, caption: str | None) -> None:
        image = {"key": key, "path": str(path.resolve()), "caption": caption}
        self._append({"step": step, "time": time.time(), "image": image})

    def _close(self, failed: bool) -> None:
        self._file.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every line of a tracker file as a dict, in file order.

    A last line cut off without its newline (the process died while writing it) is skipped; any other
    line that is not a JSON object raises ValueError naming the file and line number.
    """
    file_path = Path(path)
    if not file_path.is_file():
        raise FileNotFoundError(f"jsonl tracker file not found: {file_path}")
    text = file_path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise ValueError(f"{file_path}:{number} is not valid JSON: {error}") from error
        if not isinstance(record, dict):
            raise ValueError(f"{file_path}:{number} must hold a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def read_jsonl_history(path: str | Path) -> list[dict[str, Any]]:
    """The metric lines (``step``, ``time`` and the metrics) of a tracker file, in file order."""
    return [record for record in read_jsonl(path) if "config" not in record and "image" not in record]


def read_jsonl_config(path: str | Path) -> dict[str, Any] | None:
    """The run config of a tracker file: its config lines merged key by key in order; None without any."""
    merged: dict[str, Any] | None = None
    for record in read_jsonl(path):
        if "config" in record:
            merged = {**(merged or {}), **record["config"]}
    return merged
