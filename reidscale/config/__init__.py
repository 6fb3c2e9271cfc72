"""Typed configuration: dataclasses (schema), YAML + dotted overrides (loader), run records."""

from reidscale.config.loader import (
    ConfigError,
    build_config,
    config_to_dict,
    describe,
    dump_yaml,
    load_config,
)
from reidscale.config.record import write_run_record
from reidscale.config.schema import Config, EvalConfig, RerankConfig, RunConfig, TrackingConfig, WandbConfig

__all__ = [
    "Config",
    "ConfigError",
    "EvalConfig",
    "RerankConfig",
    "RunConfig",
    "TrackingConfig",
    "WandbConfig",
    "build_config",
    "config_to_dict",
    "describe",
    "dump_yaml",
    "load_config",
    "write_run_record",
]
