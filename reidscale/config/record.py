"""What a run leaves beside its outputs: the resolved config and where the code came from."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from reidscale.config.loader import dump_yaml
from reidscale.utils.io import atomic_write_json, atomic_write_text
from reidscale.utils.provenance import git_commit, installed_versions, utc_timestamp


def write_run_record(
    output_stem: str | Path, config: Any, argv: list[str] | None = None
) -> tuple[Path, Path]:
    """Write ``<stem>.config.yaml`` (re-loadable with ``--config``) and ``<stem>.run.json`` (commit, versions,
    command line, time) atomically. Returns both paths."""
    stem = Path(output_stem)
    config_path = atomic_write_text(stem.with_name(stem.name + ".config.yaml"), dump_yaml(config))
    info = {
        "git_commit": git_commit(),
        "command": list(sys.argv if argv is None else argv),
        "created": utc_timestamp(),
        "versions": installed_versions(),
        "config_file": config_path.name,
    }
    info_path = atomic_write_json(stem.with_name(stem.name + ".run.json"), info)
    return config_path, info_path
