"""The one registry: entries by key, each registered once, looked up with errors that list what exists.

``Registry`` holds any values (backbone factories, weights filters, ...); ``ReaderRegistry`` is a Registry of
readers ``reader(path, **options)`` that also checks the options a reader takes.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Registry(Generic[K, V]):
    """Values by key, in registration order.

    ``noun`` and ``key_word`` name the lookup in messages: ``Registry("backbone")`` refuses a second
    "backbone 'x' is already registered" and answers an unknown key with "unknown backbone name 'x'; known
    names: a, b". ``fold_case`` strips and lower-cases string keys on lookup (register them lower-case).
    """

    def __init__(
        self,
        noun: str,
        key_word: str = "name",
        entries: Mapping[K, V] | None = None,
        *,
        fold_case: bool = False,
    ) -> None:
        self.noun, self.key_word, self.fold_case = noun, key_word, fold_case
        self._entries: dict[K, V] = {}
        for key, value in (entries or {}).items():
            self.add(key, value)

    def _lookup_key(self, key: object) -> object:
        return str(key).strip().lower() if self.fold_case else key

    def keys(self) -> tuple[K, ...]:
        """The registered keys, in registration order."""
        return tuple(self._entries)

    def __contains__(self, key: object) -> bool:
        try:
            return self._lookup_key(key) in self._entries
        except TypeError:  # unhashable: never a key
            return False

    def __iter__(self) -> Iterator[K]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: K, value: V, what: str | None = None) -> None:
        """Store ``value`` under ``key``; ValueError "<what> is already registered" for a key that exists
        (``what`` defaults to "<noun> <key!r>")."""
        stored = self._lookup_key(key)
        if stored in self._entries:
            raise ValueError(f"{what or f'{self.noun} {key!r}'} is already registered")
        self._entries[stored] = value  # type: ignore[index]

    def register(self, key: K, what: str | None = None) -> Callable[[V], V]:
        """Decorator form of ``add``: stores its target under ``key`` and returns it unchanged."""

        def decorate(value: V) -> V:
            self.add(key, value, what)
            return value

        return decorate

    def get(self, key: K) -> V:
        """The value registered under ``key``; ValueError listing the known keys otherwise."""
        if key not in self:
            raise self.unknown(key)
        return self._entries[self._lookup_key(key)]

    def unknown(self, key: object, known: Iterable[object] | None = None) -> ValueError:
        """The error for an unknown ``key``, listing ``known`` (default: the registered keys)."""
        listed = ", ".join(str(name) for name in (self.keys() if known is None else known))
        return ValueError(f"unknown {self.noun} {self.key_word} {key!r}; known {self.key_word}s: {listed}")

    def copy(self) -> Registry[K, V]:
        """An independent registry with the same settings and entries (e.g. to undo test registrations)."""
        other = copy.copy(self)
        other._entries = dict(self._entries)
        return other


class ReaderRegistry(Registry[str, Callable[..., T]]):
    """Readers ``reader(path, **options)`` by name. ``what`` is (noun, key word), e.g. ("dataset", "name")
    gives "unknown dataset name 'x'; known names: ..."; ``fold_case`` makes lookups case-insensitive."""

    def __init__(
        self, what: tuple[str, str], readers: Mapping[str, Callable[..., T]], fold_case: bool = False
    ) -> None:
        noun, key_word = what
        super().__init__(noun, key_word, readers, fold_case=fold_case)

    @property
    def names(self) -> tuple[str, ...]:
        """The reader names, in registration order."""
        return self.keys()

    def reader(self, name: str) -> Callable[..., T]:
        """The reader registered as ``name``; ValueError listing the known names otherwise."""
        return self.get(name)

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
