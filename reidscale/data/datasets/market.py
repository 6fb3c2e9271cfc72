"""Readers for benchmarks in the Market-1501 layout: Market-1501, DukeMTMC-reID, CUHK03-NP, any such folder.

File names start with ``<pid>_c<camera>``: ``0002_c1s1_000451_03.jpg`` (Market), ``0001_c2_f0046182.jpg``
(Duke), ``0001_c1_1.png`` (CUHK03-NP). pid −1 is junk and dropped everywhere; pid 0 is a distractor, kept in
the gallery and dropped from train and query; cameras are numbered from 1 in the name and from 0 in ``camid``.
Train pids are relabelled to 0..n−1. Only names are read: images are never opened.

Root convention: ``root`` may be the dataset folder itself (the one holding ``bounding_box_train/`` …) or
its parent holding the folder under its release name (``Market-1501-v15.09.15``, ``DukeMTMC-reID``,
``cuhk03-np``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .base import (
    IMAGE_EXTENSIONS,
    ImageRecord,
    ReidDataset,
    absolute_folder,
    is_image_name,
    layout_tree,
    relabel_pids,
    require_subfolders,
    resolve_dataset_folder,
)

MARKET_NAME_PATTERN = re.compile(r"^(-?\d+)_c(\d+)(?=[s_.])")
MARKET_NAME_HELP = (
    r"'<pid>_c<camera>…' (regex ^(-?\d+)_c(\d+) followed by 's', '_' or '.'), "
    "e.g. 0002_c1s1_000451_03.jpg or 0001_c1_1.png; pid ≥ −1, camera ≥ 1"
)
MARKET_SPLIT_FOLDERS: dict[str, str] = {
    "train": "bounding_box_train",
    "query": "query",
    "gallery": "bounding_box_test",
}
CUHK03_VARIANTS: tuple[str, ...] = ("detected", "labeled")

JUNK_PID = -1
DISTRACTOR_PID = 0


def parse_market_name(path: str | os.PathLike) -> tuple[int, int]:
    """(pid, 1-based camera) from a Market-style file name; ValueError naming the file and the pattern."""
    file_name = os.path.basename(os.fspath(path))
    match = MARKET_NAME_PATTERN.match(file_name)
    if match is None:
        raise ValueError(f"{path}: file name does not follow the Market naming {MARKET_NAME_HELP}")
    pid, camera = int(match.group(1)), int(match.group(2))
    if pid < JUNK_PID or camera < 1:
        raise ValueError(f"{path}: pid {pid}, camera {camera} out of range; expected {MARKET_NAME_HELP}")
    return pid, camera


def read_market_style_folder(
    folder: str | os.PathLike,
    relabel: bool = False,
    *,
    keep_distractors: bool | None = None,
    max_camera: int | None = None,
) -> list[ImageRecord]:
    """Records of every image directly inside ``folder`` (sub-folders are not read), sorted by path.

    Junk (pid −1) is dropped. Distractors (pid 0) are kept when ``keep_distractors`` is true; by default they
    are kept unless ``relabel`` is set (a training folder). ``relabel`` maps pids to 0..n−1. Files without an
    image extension (IMAGE_EXTENSIONS; e.g. Thumbs.db) and hidden files (.DS_Store, ._x.jpg) are ignored; an
    image whose name does not parse, or whose camera exceeds ``max_camera``, is an error, as is a folder
    without images.
    """
    tree = layout_tree("<folder>/", [("0002_c1s1_000451_03.jpg", MARKET_NAME_HELP)])
    folder_path = absolute_folder(folder, "image folder", tree)
    keep_zero = (not relabel) if keep_distractors is None else keep_distractors
    with os.scandir(folder_path) as entries:
        image_paths = sorted(entry.path for entry in entries if entry.is_file() and is_image_name(entry.name))
    if not image_paths:
        raise ValueError(
            f"{folder_path} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
            f"expected files named {MARKET_NAME_HELP}"
        )
    records = []
    for path in image_paths:
        pid, camera = parse_market_name(path)
        if max_camera is not None and camera > max_camera:
            raise ValueError(
                f"{path}: camera {camera} out of range; this dataset has cameras 1..{max_camera}"
            )
        if pid == JUNK_PID or (pid == DISTRACTOR_PID and not keep_zero):
            continue
        records.append(ImageRecord(path=path, pid=pid, camid=camera - 1))
    return relabel_pids(records) if relabel else records


def read_market_layout(
    dataset_folder: Path, name: str, split_folders: dict[str, str], max_camera: int | None
) -> ReidDataset:
    """Read the splits named in ``split_folders`` (split → sub-folder) of an already checked folder."""
    subsets = {
        split: read_market_style_folder(
            dataset_folder / sub,
            relabel=split == "train",
            keep_distractors=split == "gallery",
            max_camera=max_camera,
        )
        for split, sub in split_folders.items()
    }
    return ReidDataset(name=name, root=str(dataset_folder), **subsets)


def _market_tree(top: str, example: str) -> str:
    return layout_tree(
        top,
        [
            ("bounding_box_train/", f"train images, e.g. {example}"),
            ("bounding_box_test/", "gallery images (pid 0 = distractor, -1 = junk)"),
            ("query/", "query images"),
        ],
    )


def _read_released_market_layout(
    root: str | os.PathLike, name: str, label: str, release_name: str, example: str, max_camera: int
) -> ReidDataset:
    tree = _market_tree(f"{release_name}/  (pass this folder or its parent as root)", example)
    required = list(MARKET_SPLIT_FOLDERS.values())
    folder = resolve_dataset_folder(root, required, [release_name], label, tree)
    return read_market_layout(folder, name, MARKET_SPLIT_FOLDERS, max_camera)


def read_market1501(root: str | os.PathLike) -> ReidDataset:
    """Market-1501 (751 train ids / 12,936 images; 3,368 query; 15,913 gallery; cameras 1–6)."""
    return _read_released_market_layout(
        root, "market1501", "Market-1501", "Market-1501-v15.09.15", "0002_c1s1_000451_03.jpg", max_camera=6
    )


def read_dukemtmcreid(root: str | os.PathLike) -> ReidDataset:
    """DukeMTMC-reID (702 train ids / 16,522 images; 2,228 query; 17,661 gallery; cameras 1–8)."""
    return _read_released_market_layout(
        root, "dukemtmcreid", "DukeMTMC-reID", "DukeMTMC-reID", "0001_c2_f0046182.jpg", max_camera=8
    )


def read_cuhk03np(root: str | os.PathLike, *, variant: str = "detected") -> ReidDataset:
    """CUHK03-NP, the 767/700 split, ``variant`` "detected" (default) or "labeled" boxes; cameras 1–2.

    ``root`` is the ``cuhk03-np`` folder (holding ``detected/`` and ``labeled/``) or its parent; only the
    chosen variant has to be present.
    """
    if variant not in CUHK03_VARIANTS:
        raise ValueError(f"variant must be one of {CUHK03_VARIANTS}, got {variant!r}")
    inner = _market_tree(f"{variant}/", "0001_c1_1.png").replace("\n", "\n    ")
    tree = f"  cuhk03-np/  (pass this folder or its parent as root)\n  └── {inner.strip()}"
    folder = resolve_dataset_folder(root, [variant], ["cuhk03-np"], "CUHK03-NP", tree)
    variant_folder = folder / variant
    require_subfolders(variant_folder, list(MARKET_SPLIT_FOLDERS.values()), "CUHK03-NP", tree)
    return read_market_layout(variant_folder, f"cuhk03np_{variant}", MARKET_SPLIT_FOLDERS, max_camera=2)


def read_market_folder(root: str | os.PathLike) -> ReidDataset:
    """Any benchmark laid out as ``root/query/``, ``root/gallery/`` and optionally ``root/train/``.

    Files follow the Market naming (see ``read_market_style_folder``); cameras are not range-checked; train
    is empty when ``train/`` is absent.
    """
    tree = layout_tree(
        "<root>/",
        [
            ("train/", "optional, train images, e.g. 0002_c1s1_000451_03.jpg"),
            ("query/", "query images"),
            ("gallery/", "gallery images (pid 0 = distractor, -1 = junk)"),
        ],
    )
    folder = absolute_folder(root, "market_folder root", tree)
    require_subfolders(folder, ["query", "gallery"], "market_folder", tree)
    split_folders = {split: split for split in ("train", "query", "gallery") if (folder / split).is_dir()}
    return read_market_layout(folder, "market_folder", split_folders, max_camera=None)
