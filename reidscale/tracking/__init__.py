"""Experiment trackers behind one interface: wandb, jsonl and console backends, fanned out by MultiTracker.

Only global rank 0 logs; every other rank gets a NullTracker, so callers never branch on the rank::

    tracker = build_tracker(["console", "jsonl", "wandb"], run_dir, "cion-r50", config=resolved_config)
    with tracker:
        for step, batch in enumerate(tracker.progress(loader, total=len(loader), desc="epoch 0")):
            tracker.log({"loss": loss.item(), "lr": lr}, step=step)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from reidscale.tracking.base import MultiTracker, NullTracker, Tracker
from reidscale.tracking.console import ConsoleTracker
from reidscale.tracking.jsonl import JsonlTracker, read_jsonl, read_jsonl_config, read_jsonl_history
from reidscale.tracking.wandb_records import (
    find_offline_run,
    iter_wandb_records,
    read_wandb_config,
    read_wandb_history,
    read_wandb_run_info,
)
from reidscale.tracking.wandb_tracker import WandbOptions, WandbTracker, resolve_wandb_mode
from reidscale.utils.dist import get_rank

TRACKER_BACKENDS: tuple[str, ...] = ("wandb", "jsonl", "console")
DEFAULT_JSONL_NAME = "metrics.jsonl"

__all__ = [
    "DEFAULT_JSONL_NAME",
    "TRACKER_BACKENDS",
    "ConsoleTracker",
    "JsonlTracker",
    "MultiTracker",
    "NullTracker",
    "Tracker",
    "WandbOptions",
    "WandbTracker",
    "build_tracker",
    "check_backends",
    "find_offline_run",
    "iter_wandb_records",
    "read_jsonl",
    "read_jsonl_config",
    "read_jsonl_history",
    "read_wandb_config",
    "read_wandb_history",
    "read_wandb_run_info",
    "resolve_wandb_mode",
]


def check_backends(backends: Sequence[str]) -> list[str]:
    """``backends`` as a list after checking every name is known and listed once."""
    if isinstance(backends, str) or not isinstance(backends, Sequence):
        raise ValueError(f"backends must be a list of names from {TRACKER_BACKENDS}, got {backends!r}")
    unknown = [name for name in backends if name not in TRACKER_BACKENDS]
    if unknown:
        raise ValueError(f"unknown tracker backend(s) {unknown}; valid names are {list(TRACKER_BACKENDS)}")
    repeated = sorted({name for name in backends if list(backends).count(name) > 1})
    if repeated:
        raise ValueError(f"tracker backend(s) {repeated} listed more than once in {list(backends)}")
    return list(backends)


def build_tracker(
    backends: Sequence[str],
    run_dir: str | Path,
    run_name: str,
    config: Mapping[str, Any] | None = None,
    wandb_options: WandbOptions | None = None,
    jsonl_path: str | Path | None = None,
    rank: int | None = None,
    show_progress: bool = True,
) -> Tracker:
    """The tracker a run uses: the named backends (in that order) on rank 0, a NullTracker elsewhere.

    run_dir: the run's output folder; the jsonl file defaults to ``run_dir/metrics.jsonl`` and the wandb
        folder to ``run_dir`` (wandb adds ``wandb/offline-run-...`` below it).
    run_name: the wandb run name unless ``wandb_options.name`` is set.
    config: the resolved run config, logged by every backend at start.
    rank: the global rank; None reads it from torch.distributed or the launcher's environment.
    An empty ``backends`` list gives a NullTracker; one backend is returned as is, several in a MultiTracker.
    Names are checked on every rank, so a misspelt backend fails the same way everywhere.
    """
    names = check_backends(backends)
    if not isinstance(run_name, str) or not run_name:
        raise ValueError(f"run_name must be a non-empty string, got {run_name!r}")
    if (get_rank() if rank is None else rank) != 0 or not names:
        return NullTracker()
    run_dir = Path(run_dir)
    trackers: list[Tracker] = []
    try:
        for name in names:
            tracker = _build_backend(
                name, run_dir, run_name, config, wandb_options, jsonl_path, show_progress
            )
            trackers.append(tracker)
    except BaseException:
        for tracker in trackers:
            tracker.finish()
        raise
    return trackers[0] if len(trackers) == 1 else MultiTracker(trackers)


def _build_backend(
    name: str,
    run_dir: Path,
    run_name: str,
    config: Mapping[str, Any] | None,
    wandb_options: WandbOptions | None,
    jsonl_path: str | Path | None,
    show_progress: bool,
) -> Tracker:
    if name == "console":  # the resolved config lives in the run record; the console keeps to metrics
        return ConsoleTracker(show_progress=show_progress)
    if name == "jsonl":
        path = jsonl_path if jsonl_path is not None else run_dir / DEFAULT_JSONL_NAME
        return JsonlTracker(path, config=config)
    options = wandb_options if wandb_options is not None else WandbOptions()
    options = replace(options, name=options.name or run_name, dir=options.dir or str(run_dir))
    return WandbTracker(options, config=config)
