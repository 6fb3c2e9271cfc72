"""Typed configuration: YAML + dotted overrides (loader), roots composed per command (compose), run records.

The package knows no section: each subsystem owns the dataclass of its section, and each command composes
the root it reads (``reidscale.jobs.roots``).
"""

from reidscale.config.compose import Section, compose_root
from reidscale.config.loader import (
    ConfigError,
    build_config,
    config_to_dict,
    describe,
    dump_yaml,
    load_config,
)
from reidscale.config.record import write_run_record

__all__ = [
    "ConfigError",
    "Section",
    "build_config",
    "compose_root",
    "config_to_dict",
    "describe",
    "dump_yaml",
    "load_config",
    "write_run_record",
]
