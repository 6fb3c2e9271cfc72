"""Registries: named readers of the form ``reader(path, **options)``, looked up with errors that list what
exists, and ``register_into``, the decorator that fills a registry table once per key."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


def register_into(table: dict[K, V], key: K, what: str) -> Callable[[V], V]:
    """Decorator storing its target as ``table[key]`` and returning it unchanged; a second registration of
    ``key`` is refused (ValueError "<what> is already registered")."""

    def decorate(value: V) -> V:
        if key in table:
            raise ValueError(f"{what} is already registered")
        table[key] = value
        return value

    return decorate


class ReaderRegistry(Generic[T]):
    """Readers by name. ``what`` names the lookup key in messages, e.g. ("dataset", "name") gives
    "unknown dataset name 'x'; known names: ...". ``fold_case`` makes lookups case-insensitive."""

    def __init__(
        self, what: tuple[str, str], readers: Mapping[str, Callable[..., T]], fold_case: bool = False
    ) -> None:
        self.noun, self.key_word = what
        self.readers = dict(readers)
        self.fold_case = fold_case

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.readers)

    def reader(self, name: str) -> Callable[..., T]:
        """The reader registered as ``name``; ValueError listing the known names otherwise."""
        key = str(name).strip().lower() if self.fold_case else name
        if key not in self.readers:
            known = ", ".join(self.names)
            raise ValueError(f"unknown {self.noun} {self.key_word} {name!r}; known {self.key_word}s: {known}")
        return self.readers[key]

    def options(self, name: str) -> tuple[str, ...]:
        """The keyword options the reader of ``name`` accepts besides the path (its first parameter)."""
        parameters = list(inspect.signature(self.reader(name)).parameters.values())[1:]
        return tuple(parameter.name for parameter in parameters)

    def load(self, name: str, path: str | os.PathLike, **options: object) -> T:
        """Call the reader of ``name`` on ``path``; ValueError naming any option it does not take."""
        accepted = self.options(name)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            takes = ", ".join(accepted) if accepted else "no options"
            raise ValueError(
                f"{self.noun} {self.key_word} {name!r} does not take option(s) {unknown}; it takes {takes}"
            )
        return self.reader(name)(path, **options)
