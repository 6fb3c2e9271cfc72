"""Roots of the config tree, composed per command from the sections their subsystems own.

Every subsystem defines the dataclass of its own section next to its code (``evaluation.config``,
``tracking.config``, ``engine.config``, ``models.config``, the data sets, each method). This package knows
none of them: a command lists the sections it reads as :class:`Section` values and :func:`compose_root`
makes the root dataclass, which the loader fills from YAML and overrides like any other. So a command
accepts exactly the options it reads, and ``reidscale config COMMAND`` lists them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from reidscale.utils.options import option


@dataclass(frozen=True)
class Section:
    """One top-level section of a root: its key, its dataclass and what it holds (shown by ``config``)."""

    key: str
    cls: type
    doc: str


def compose_root(name: str, sections: Sequence[Section], module: str | None = None) -> type:
    """A dataclass named ``name`` with one field per section (``key: cls``, default ``cls()``).

    ``module``: the module that can hand the class back by ``name`` (its ``__getattr__``), so that
    configs pickle; None = this module (they then do not).

    Raises:
        ValueError: a key appears twice, or a section's class is not a dataclass.
    """
    keys = [section.key for section in sections]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"config root {name}: section key(s) {repeated} given more than once")
    fields = []
    for section in sections:
        if not dataclasses.is_dataclass(section.cls):
            raise ValueError(
                f"config root {name}: section {section.key!r} must be a dataclass, got {section.cls}"
            )
        fields.append((section.key, section.cls, option(doc=section.doc, factory=section.cls)))
    root = dataclasses.make_dataclass(name, fields)
    root.__module__ = module or __name__  # (make_dataclass takes module= only from Python 3.12)
    root.__doc__ = f"The config tree of {name}: sections {', '.join(keys)}."
    return root
