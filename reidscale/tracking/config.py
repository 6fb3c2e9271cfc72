"""``tracking``: which experiment trackers receive metrics, and the wandb settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reidscale.utils.options import option


@dataclass
class WandbConfig:
    """Weights & Biases settings (offline unless the user opts in)."""

    project: str = option("reidscale", "wandb project")
    entity: str | None = option(None, "wandb entity (team or user); null = the account default")
    name: str | None = option(None, "wandb run name; null = run.name")
    group: str | None = option(None, "wandb group, e.g. to gather the ranks or the sweeps of one experiment")
    tags: list[str] = option(doc="wandb tags", factory=list)
    mode: Literal["online", "offline", "disabled"] | None = option(
        None, "null = $WANDB_MODE if set, else online when $WANDB_API_KEY is set, else offline"
    )


@dataclass
class TrackingConfig:
    """Which experiment trackers receive metrics; only global rank 0 logs."""

    backends: list[Literal["console", "jsonl", "wandb"]] = option(
        doc="tracker backends to log to (any of console, jsonl, wandb)", factory=lambda: ["console", "jsonl"]
    )
    jsonl_path: str | None = option(
        None, "jsonl log file; null = metrics.jsonl in the run folder (evaluate: <output stem>.metrics.jsonl)"
    )
    progress: bool = option(True, "show progress bars on long work (console backend)")
    wandb: WandbConfig = option(doc="wandb backend settings", factory=WandbConfig)
