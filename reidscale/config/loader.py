"""Typed configs from YAML files and dotted command-line overrides, with errors that say what to fix.

A config is a tree of dataclasses. ``build_config(cls, data)`` checks a nested dict against it: unknown
keys fail with close matches, wrong types fail with the expected type, ints are accepted where floats
are expected. ``apply_overrides`` takes ``["--optim.lr", "0.05", "--run.name=x"]``; each value is read as
YAML (so ``true``, ``[a, b]``, ``null`` work) and then checked like a file value.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from reidscale.utils.options import field_doc

C = TypeVar("C")


class ConfigError(ValueError):
    """A config value, key or file that does not fit the schema; the message names the key."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, Sequence, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _describe_value(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` and return it (int→float widened); ConfigError otherwise."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"'{key}' expects a mapping of {tp.__name__} fields, got {_describe_value(value)}"
            )
        return build_config(tp, value, prefix=key)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"'{key}' expects {_type_name(tp)}, got {_describe_value(value)}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ConfigError(f"'{key}' expects {_type_name(tp)}, got {value!r}{hint}")
        return value
    if origin in (list, tuple, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' expects {_type_name(tp)}, got {_describe_value(value)}")
        (item_type,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if tp is Any:
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"'{key}' expects null, got {_describe_value(value)}")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"'{key}' expects {tp.__name__}, got {_describe_value(value)}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"'{key}' expects {_type_name(tp)}, got {_describe_value(value)}")
    return value


def _resolved_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def build_config(cls: type[C], data: Mapping[str, Any] | None, prefix: str = "") -> C:
    """Instantiate dataclass ``cls`` from a nested mapping, checking every key and type."""
    data = dict(data or {})
    fields = _resolved_fields(cls)
    names = [f.name for f, _ in fields]
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"unknown config key '{full}'{hint} (valid keys here: {', '.join(names)})")
    kwargs = {}
    for field, tp in fields:
        full = f"{prefix}.{field.name}" if prefix else field.name
        if field.name in data:
            kwargs[field.name] = _coerce(data[field.name], tp, full)
        elif dataclasses.is_dataclass(tp):
            kwargs[field.name] = build_config(tp, {}, prefix=full)
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config tree as plain nested dicts and lists (YAML/JSON ready)."""
    return dataclasses.asdict(config)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, cls: type) -> None:
    parts = dotted.split(".")
    node, node_cls = tree, cls
    for depth, part in enumerate(parts):
        fields = dict((f.name, tp) for f, tp in _resolved_fields(node_cls))
        if part not in fields:
            prefix = ".".join(parts[:depth])
            candidates = [f"{prefix}.{n}" if prefix else n for n in fields]
            close = difflib.get_close_matches(dotted, _all_keys(cls), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown config key '{dotted}'{hint} (valid keys here: {', '.join(candidates)})"
            )
        if depth == len(parts) - 1:
            node[part] = value
            return
        if not dataclasses.is_dataclass(fields[part]):
            raise ConfigError(
                f"'{'.'.join(parts[: depth + 1])}' is a {_type_name(fields[part])}, not a section"
            )
        node = node.setdefault(part, {})
        node_cls = fields[part]


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for field, tp in _resolved_fields(cls):
        full = f"{prefix}.{field.name}" if prefix else field.name
        keys.extend(_all_keys(tp, full) if dataclasses.is_dataclass(tp) else [full])
    return keys


def _parse_override_value(text: str, tp: Any) -> Any:
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text
    # A string field keeps the literal text ("123", "null" stays a name only if the field cannot be null).
    wants_str = tp is str or (typing.get_origin(tp) is typing.Literal and text in typing.get_args(tp))
    if wants_str and not isinstance(value, str):
        return text
    return value


def _field_type(cls: type, dotted: str) -> Any:
    node_cls: Any = cls
    for part in dotted.split("."):
        fields = dict((f.name, tp) for f, tp in _resolved_fields(node_cls))
        if part not in fields:
            return Any
        node_cls = fields[part]
    return node_cls


def parse_overrides(args: Sequence[str]) -> list[tuple[str, str]]:
    """Split ``["--a.b", "1", "--c=2"]`` into ``[("a.b", "1"), ("c", "2")]``; ConfigError on anything else."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or len(token) <= 2:
            raise ConfigError(f"expected a config override like --section.key VALUE, got {token!r}")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"config override --{key} needs a value")
            value = args[i + 1]
            i += 2
        pairs.append((key, value))
    return pairs


def apply_overrides(cls: type[C], tree: dict[str, Any], args: Sequence[str]) -> dict[str, Any]:
    """Merge dotted overrides into a nested dict (in place, returned) after checking the keys exist."""
    for key, text in parse_overrides(args):
        _set_dotted(tree, key, _parse_override_value(text, _field_type(cls, key)), cls)
    return tree


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; ConfigError naming the file if missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping at the top level, got {type(data).__name__}"
        )
    return data


def load_config(cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """Defaults ← YAML file (optional) ← dotted overrides, checked against ``cls``."""
    tree = read_yaml(path) if path is not None else {}
    apply_overrides(cls, tree, overrides)
    prefix_errors = f" (in {path})" if path is not None else ""
    try:
        return build_config(cls, tree)
    except ConfigError as err:
        raise ConfigError(f"{err}{prefix_errors}") from None


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, type, doc) for every leaf option of a config tree, for ``--help`` and docs."""
    rows = []
    for field, tp in _resolved_fields(cls):
        full = f"{prefix}.{field.name}" if prefix else field.name
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, full))
        else:
            rows.append((full, _type_name(tp), field_doc(field)))
    return rows


def dump_yaml(config: Any) -> str:
    """The resolved config as YAML text (keys in declaration order)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
