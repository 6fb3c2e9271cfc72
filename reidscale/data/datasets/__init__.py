"""Readers for the standard ReID benchmarks: file lists with pid and camera, no image decoding.

``load_dataset(name, root, **options)`` looks ``name`` up in DATASET_NAMES and returns a ReidDataset with
``train`` (pids relabelled 0..n−1), ``query`` and ``gallery`` (original pids, gallery distractors pid 0)
record lists, each sorted by path.
"""

from __future__ import annotations

import os

from reidscale.utils.registry import ReaderRegistry

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

_REGISTRY: ReaderRegistry[ReidDataset] = ReaderRegistry(
    ("dataset", "name"),
    {
        "market1501": read_market1501,
        "dukemtmcreid": read_dukemtmcreid,
        "cuhk03np": read_cuhk03np,
        "msmt17": read_msmt17,
        "market_folder": read_market_folder,
    },
    fold_case=True,
)
DATASET_NAMES: tuple[str, ...] = _REGISTRY.names


def dataset_options(name: str) -> tuple[str, ...]:
    """The keyword options the reader of dataset ``name`` accepts."""
    return _REGISTRY.options(name)


def load_dataset(name: str, root: str | os.PathLike, **options: object) -> ReidDataset:
    """Read benchmark ``name`` (one of DATASET_NAMES, any case) from ``root``.

    Options per dataset: cuhk03np ``variant`` ("detected" | "labeled"); msmt17 ``version`` (None | "V1" |
    "V2"), ``combine_train_val`` (bool), ``check_files`` (bool). Others take none.
    """
    return _REGISTRY.load(name, root, **options)


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
