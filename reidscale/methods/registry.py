"""The registry of training methods: ``register_method(spec)``, ``method_spec(command, name)``."""

from __future__ import annotations

from reidscale.methods.spec import MethodSpec
from reidscale.utils.registry import register_into

#: (command, method name) → spec, filled by ``register_method`` when ``reidscale.methods`` is imported
_METHODS: dict[tuple[str, str], MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (ValueError when its command already has a method of that name)."""
    return register_into(_METHODS, (spec.command, spec.name), f"method {spec.name!r} of {spec.command}")(spec)


def method_names(command: str) -> tuple[str, ...]:
    """The names of the methods ``command`` trains, in registration order."""
    return tuple(name for cmd, name in _METHODS if cmd == command)


def method_spec(command: str, name: str) -> MethodSpec:
    """The spec of method ``name`` of ``command``; ValueError listing the known ones otherwise."""
    if (command, name) not in _METHODS:
        known = ", ".join(method_names(command)) or "none"
        raise ValueError(f"{command}: unknown method {name!r}; known methods: {known}")
    return _METHODS[(command, name)]


def methods_of(command: str) -> tuple[MethodSpec, ...]:
    """Every spec ``command`` trains (to compose its config root)."""
    return tuple(spec for (cmd, _), spec in _METHODS.items() if cmd == command)
