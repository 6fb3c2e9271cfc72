"""``option`` / ``field_doc`` live in :mod:`reidscale.utils.options`, so that the sections defined beside
their subsystems (engine, models, objectives) import them without importing the config tree."""

from reidscale.utils.options import field_doc, option

__all__ = ["field_doc", "option"]
