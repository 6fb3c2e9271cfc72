"""Weights & Biases tracker: offline unless the user asks for online, imported only when used.

Mode, first match wins: ``WandbOptions.mode``; the ``WANDB_MODE`` environment variable; ``"online"`` when
``WANDB_API_KEY`` is set; otherwise ``"offline"``. An offline run makes no network connection; it writes
``<dir>/wandb/offline-run-<date>-<id>/run-<id>.wandb``, which ``wandb sync`` uploads later and
``reidscale.tracking.wandb_records`` reads back. ``finish`` returns once that log is complete on disk
(wandb's own ``run.finish()`` returns before wandb-core writes its last block).

Defaults passed to ``wandb.Settings`` (``WandbOptions.settings`` adds to and overrides them):
``console="off"``: the console tracker already prints every line, and wandb's capture of sys.stdout/stderr
fights with other redirections such as pytest's.
``x_history_value_encoding="json,typed"`` (where this wandb has it): besides the JSON text the server
reads, each history value is also stored with its Python type. wandb-core re-encodes the JSON text, so
from that alone a logged ``1.0`` reads back as ``1`` and ``-0.0`` as ``0``; the typed form keeps both exact.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from reidscale.tracking.base import MetricValue, Tracker, plain_config

WANDB_MODES: tuple[str, ...] = ("online", "offline", "disabled")
#: older spellings wandb still accepts in WANDB_MODE
_MODE_ALIASES: dict[str, str] = {"dryrun": "offline", "run": "online"}
DEFAULT_WANDB_SETTINGS: dict[str, Any] = {"console": "off", "x_history_value_encoding": "json,typed"}


@dataclass
class WandbOptions:
    """Arguments of ``wandb.init``; ``name``/``dir`` default to the run name/run folder in build_tracker."""

    project: str = "reidscale"
    entity: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str | None = None
    dir: str | None = None
    group: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.project, str) or not self.project:
            raise ValueError(f"WandbOptions.project must be a non-empty string, got {self.project!r}")
        if isinstance(self.tags, str) or not all(isinstance(tag, str) for tag in self.tags):
            raise ValueError(f"WandbOptions.tags must be a list of strings, got {self.tags!r}")
        if self.mode is not None and self.mode not in WANDB_MODES:
            raise ValueError(f"WandbOptions.mode must be one of {WANDB_MODES} or None, got {self.mode!r}")
        if not isinstance(self.settings, Mapping):
            raise ValueError(f"WandbOptions.settings must be a mapping, got {type(self.settings).__name__}")


def resolve_wandb_mode(mode: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The wandb mode to use (see the module docstring); ``environ`` defaults to ``os.environ``."""
    env = os.environ if environ is None else environ
    if mode is not None:
        if mode not in WANDB_MODES:
            raise ValueError(f"wandb mode must be one of {WANDB_MODES}, got {mode!r}")
        return mode
    env_mode = env.get("WANDB_MODE", "").strip()
    if env_mode:
        env_mode = _MODE_ALIASES.get(env_mode, env_mode)
        if env_mode not in WANDB_MODES:
            raise ValueError(f"WANDB_MODE (environment) must be one of {WANDB_MODES}, got {env_mode!r}")
        return env_mode
    return "online" if env.get("WANDB_API_KEY", "").strip() else "offline"


def import_wandb() -> ModuleType:
    """The wandb module, or ImportError explaining how to install it."""
    try:
        import wandb
    except ImportError as error:
        raise ImportError(
            "the 'wandb' tracker backend needs the wandb package: pip install 'reidscale[track]' "
            "(or pip install wandb), or leave 'wandb' out of the tracker backends"
        ) from error
    return wandb


class WandbTracker(Tracker):
    """One wandb run, started in the constructor and finished by ``finish``.

    config: logged as the run's config at ``wandb.init``.
    """

    def __init__(self, options: WandbOptions | None = None, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.options = options if options is not None else WandbOptions()
        self.mode = resolve_wandb_mode(self.options.mode)
        wandb = import_wandb()
        self._wandb = wandb
        if self.options.dir is not None:
            Path(self.options.dir).mkdir(parents=True, exist_ok=True)
        known_settings = wandb.Settings.model_fields
        defaults = {key: value for key, value in DEFAULT_WANDB_SETTINGS.items() if key in known_settings}
        settings = wandb.Settings(**{**defaults, **self.options.settings})
        self.run = wandb.init(
            project=self.options.project,
            entity=self.options.entity,
            name=self.options.name,
            tags=list(self.options.tags) or None,
            group=self.options.group,
            config=plain_config(config) if config is not None else None,
            dir=self.options.dir,
            mode=self.mode,
            reinit="create_new",
            settings=settings,
        )

    @property
    def sync_dir(self) -> Path:
        """Folder of this run's record log and files (``.../wandb/offline-run-...`` when offline)."""
        return Path(self.run.settings.sync_dir)

    @property
    def record_file(self) -> Path:
        """This run's binary record log ``run-<id>.wandb``."""
        return Path(self.run.settings.sync_file)

    def _write_metrics(self, metrics: dict[str, MetricValue], step: int) -> None:
        self.run.log(metrics, step=step)

    def _write_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def _write_image(self, key: str, path: Path, step: int, caption: str | None) -> None:
        self.run.log({key: self._wandb.Image(str(path), caption=caption)}, step=step)

    def _close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)
        if self.mode != "disabled":
            # run.finish() returns before wandb-core has written the last block of the record log (it
            # does that when it closes the run's stream, asynchronously): wait for it, so that the
            # records are complete on disk when finish returns, whatever happens to the process next.
            from reidscale.tracking.wandb_records import wait_for_closed_log

            wait_for_closed_log(self.record_file)
