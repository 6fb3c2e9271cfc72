"""Readers for the standard ReID benchmarks: file lists with pid and camera, no image decoding.

``load_dataset(name, root, **options)`` looks ``name`` up in DATASET_NAMES and returns a ReidDataset with
``train`` (pids relabelled 0..n−1), ``query`` and ``gallery`` (original pids, gallery distractors pid 0)
record lists, each sorted by path.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from .base import IMAGE_EXTENSIONS, ImageRecord, ReidDataset, relabel_pids
from .market import (
    parse_market_name,
    read_cuhk03np,
    read_dukemtmcreid,
    read_market1501,
    read_market_folder,
    read_market_style_folder,
)
from .msmt17 import read_msmt17

_READERS: dict[str, Callable[..., ReidDataset]] = {
    "market1501": read_market1501,
    "dukemtmcreid": read_dukemtmcreid,
    "cuhk03np": read_cuhk03np,
    "msmt17": read_msmt17,
    "market_folder": read_market_folder,
}
DATASET_NAMES: tuple[str, ...] = tuple(_READERS)


def dataset_options(name: str) -> tuple[str, ...]:
    """The keyword options the reader of dataset ``name`` accepts."""
    reader = _reader(name)
    parameters = inspect.signature(reader).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def load_dataset(name: str, root: str | os.PathLike, **options: object) -> ReidDataset:
    """Read benchmark ``name`` (one of DATASET_NAMES, any case) from ``root``.

    Options per dataset: cuhk03np ``variant`` ("detected" | "labeled"); msmt17 ``version`` (None | "V1" |
    "V2"), ``combine_train_val`` (bool), ``check_files`` (bool). Others take none.
    """
    accepted = dataset_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise ValueError(f"dataset {name!r} does not take option(s) {unknown}; it takes {takes}")
    return _reader(name)(root, **options)


def _reader(name: str) -> Callable[..., ReidDataset]:
    key = str(name).strip().lower()
    if key not in _READERS:
        raise ValueError(f"unknown dataset name {name!r}; known names: {', '.join(DATASET_NAMES)}")
    return _READERS[key]


__all__ = [
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "ImageRecord",
    "ReidDataset",
    "dataset_options",
    "load_dataset",
    "parse_market_name",
    "read_cuhk03np",
    "read_dukemtmcreid",
    "read_market1501",
    "read_market_folder",
    "read_market_style_folder",
    "read_msmt17",
    "relabel_pids",
]
