"""Reading a pickle a user supplies without running its code: ``load_plain_pickle(path)``.

A pickle may name any importable callable and call it while loading, so a pickle from outside is never
given to ``pickle.load``. The restricted unpickler here resolves no global except the few that rebuild
plain builtin values in older protocols (``set``, ``frozenset``, ``bytearray`` and ``_codecs.encode``, which
protocol 2 uses for ``bytes``): what loads is made of None, bool, int, float, str, bytes, bytearray, list,
tuple, dict, set and frozenset only. Anything else (a numpy array, a class instance, ``os.system``) stops the
load with a ManifestError naming the file and the refused global.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path

from .common import ManifestError

_PLAIN_GLOBALS: dict[tuple[str, str], object] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): codecs.encode,
}
PLAIN_VALUES = "None, bool, int, float, str, bytes, list, tuple, dict, set"


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``_PLAIN_GLOBALS`` and has no persistent ids."""

    def find_class(self, module: str, name: str) -> object:
        if module == "__builtin__":  # protocols 0-2 name the module as Python 2 did
            module = "builtins"
        found = _PLAIN_GLOBALS.get((module, name))
        if found is None:
            raise _RefusedGlobal(module, name)
        return found

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError(f"persistent id {pid!r}")


def load_plain_pickle(path: str | os.PathLike, what: str = "pickle") -> object:
    """The plain value pickled in the file ``path`` (``what`` names it in messages), loaded without running
    code; ManifestError naming the file when it holds anything but plain builtin values or does not load."""
    shown = os.fspath(path)
    try:
        data = Path(shown).read_bytes()
    except OSError as err:
        raise ManifestError(f"{shown}: the {what} cannot be read ({err})") from err
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except _RefusedGlobal as err:
        raise ManifestError(
            f"{shown}: the {what} refers to {err.module}.{err.name}; only plain values ({PLAIN_VALUES}) are "
            "read from pickles, so that loading one runs no code (re-save it with lists of str and int)"
        ) from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            UnicodeDecodeError, MemoryError) as err:  # fmt: skip
        raise ManifestError(
            f"{shown}: the {what} is not a readable pickle ({type(err).__name__}: {err})"
        ) from err
