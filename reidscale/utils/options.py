"""``option`` and ``field_doc``: a dataclass field that carries its own documentation.

Every config field is declared with ``option(default, "what it holds")`` so that the docs travel with the
value: ``describe(cls)`` lists them, error messages quote them, and a test checks none is missing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, doc: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with a docstring. Use ``factory=`` for lists and nested configs."""
    if not doc:
        raise ValueError("every config option needs a doc string")
    metadata = {"doc": doc}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    if default is _MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_doc(field: dataclasses.Field) -> str:
    """The doc string given to ``option`` ('' for a plain dataclass field)."""
    return str(field.metadata.get("doc", ""))
