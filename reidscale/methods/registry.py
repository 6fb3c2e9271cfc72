"""The registry of training methods: ``register_method(spec)``, ``method_spec(command, name)``."""

from __future__ import annotations

from reidscale.methods.spec import MethodSpec
from reidscale.utils.registry import Registry

#: (command, method name) → spec, filled by ``register_method`` when ``reidscale.methods`` is imported
_METHODS: Registry[tuple[str, str], MethodSpec] = Registry("method")


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (ValueError when its command already has a method of that name)."""
    _METHODS.add((spec.command, spec.name), spec, f"method {spec.name!r} of {spec.command}")
    return spec


def method_names(command: str) -> tuple[str, ...]:
    """The names of the methods ``command`` trains, in registration order."""
    return tuple(name for cmd, name in _METHODS if cmd == command)


def check_method(command: str, name: str, option: str) -> None:
    """ValueError "<option> must be one of (...)" when ``command`` trains no method ``name`` (nothing is
    checked before any method of ``command`` is registered)."""
    known = method_names(command)
    if known and name not in known:
        raise ValueError(f"{option} must be one of {known}, got {name!r}")


def method_spec(command: str, name: str) -> MethodSpec:
    """The spec of method ``name`` of ``command``; ValueError listing the known ones otherwise."""
    if (command, name) not in _METHODS:
        known = ", ".join(method_names(command)) or "none"
        raise ValueError(f"{command}: unknown method {name!r}; known methods: {known}")
    return _METHODS.get((command, name))


def methods_of(command: str) -> tuple[MethodSpec, ...]:
    """Every spec ``command`` trains (to compose its config root)."""
    return tuple(_METHODS.get(key) for key in _METHODS if key[0] == command)
