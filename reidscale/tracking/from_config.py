"""The run's tracker, built from the ``tracking`` section of a command's config (one place for all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reidscale.config.loader import config_to_dict
from reidscale.tracking import WandbOptions, build_tracker
from reidscale.tracking.base import Tracker


def tracker_from_config(
    config: Any, run_dir: str | Path, jsonl_path: str | Path, extra: dict[str, Any] | None = None
) -> Tracker:
    """``config.tracking``'s backends on rank 0 (a NullTracker on other ranks), logging into ``run_dir``.

    Args:
        config: the command's resolved config root, with ``tracking`` and ``run`` sections (logged by every
            backend at start, with ``extra`` merged in).
        run_dir: folder of the run (wandb writes below it).
        jsonl_path: the jsonl backend's file unless ``tracking.jsonl_path`` sets one.
        extra: more key → value pairs to log with the config (e.g. input file names).
    """
    wandb = config.tracking.wandb
    return build_tracker(
        config.tracking.backends,
        run_dir=run_dir,
        run_name=config.run.name,
        config={**config_to_dict(config), **(extra or {})},
        wandb_options=WandbOptions(
            project=wandb.project,
            entity=wandb.entity,
            name=wandb.name or config.run.name,
            tags=list(wandb.tags),
            mode=wandb.mode,
            group=wandb.group,
            dir=str(run_dir),
        ),
        jsonl_path=config.tracking.jsonl_path or jsonl_path,
        show_progress=config.tracking.progress,
    )
