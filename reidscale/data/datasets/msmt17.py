"""MSMT17 V1 and V2 reader: images in per-identity folders, splits given by list files.

Layout (V2 replaces ``train/``/``test/`` by ``mask_train_v2/``/``mask_test_v2/``)::

    MSMT17_V1/
    ├── train/               0000/0000_000_01_0303morning_0015_0.jpg …
    ├── test/
    ├── list_train.txt       lines '<path relative to train/> <pid>'
    ├── list_val.txt         (train/ too; pids share the train namespace)
    ├── list_query.txt       (relative to test/)
    └── list_gallery.txt     (relative to test/)

camid = int(file_name.split('_')[2]) − 1 (15 cameras). ``root`` may be the ``MSMT17_V1``/``MSMT17_V2`` folder
itself or its parent; the version is detected from which image folders exist unless ``version`` forces it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import ImageRecord, ReidDataset, absolute_folder, layout_tree, relabel_pids, require_subfolders

MSMT17_VERSIONS: tuple[str, ...] = ("V1", "V2")
MSMT17_IMAGE_FOLDERS: dict[str, tuple[str, str]] = {
    "V1": ("train", "test"),
    "V2": ("mask_train_v2", "mask_test_v2"),
}
MSMT17_NUM_CAMERAS = 15
LIST_LINE_HELP = "'<relative/path.jpg> <pid>' with a file name like 0000_000_01_0303morning_0015_0.jpg"
MISSING_FILES_SHOWN = 3


def msmt17_tree(version: str) -> str:
    """The expected layout of MSMT17 ``version`` as a small tree."""
    train_folder, test_folder = MSMT17_IMAGE_FOLDERS[version]
    return layout_tree(
        f"MSMT17_{version}/  (pass this folder or its parent as root)",
        [
            (f"{train_folder}/", "e.g. 0000/0000_000_01_0303morning_0015_0.jpg (camera = 3rd '_' field)"),
            (f"{test_folder}/", ""),
            ("list_train.txt", f"lines '<path relative to {train_folder}/> <pid>'"),
            ("list_val.txt", f"same, relative to {train_folder}/"),
            ("list_query.txt", f"same, relative to {test_folder}/"),
            ("list_gallery.txt", f"same, relative to {test_folder}/"),
        ],
    )


def _normalise_version(version: str | None) -> tuple[str, ...]:
    if version is None:
        return MSMT17_VERSIONS
    normalised = str(version).upper()
    normalised = normalised if normalised.startswith("V") else f"V{normalised}"
    if normalised not in MSMT17_VERSIONS:
        raise ValueError(f"version must be one of {MSMT17_VERSIONS} (or None to detect it), got {version!r}")
    return (normalised,)


def resolve_msmt17_folder(root: str | os.PathLike, version: str | None = None) -> tuple[Path, str]:
    """(dataset folder, "V1" | "V2"): ``root`` itself when it holds image folders, else ``root/MSMT17_V*``.

    Both versions present at the same level is an error asking for ``version``.
    """
    versions = _normalise_version(version)
    trees = "\nor\n".join(msmt17_tree(v) for v in versions)
    root_dir = absolute_folder(root, "MSMT17 root", trees)

    def has_images(folder: Path, v: str) -> bool:
        return any((folder / sub).is_dir() for sub in MSMT17_IMAGE_FOLDERS[v])

    found = [(root_dir, v) for v in versions if has_images(root_dir, v)]
    if not found:
        found = [(root_dir / f"MSMT17_{v}", v) for v in versions if (root_dir / f"MSMT17_{v}").is_dir()]
    if len(found) > 1:
        places = ", ".join(f"{v} at {folder}" for folder, v in found)
        raise ValueError(f"MSMT17: found both versions ({places}); pass version='V1' or version='V2'")
    if not found:
        names = " or ".join(f"MSMT17_{v}/" for v in versions)
        raise FileNotFoundError(
            f"MSMT17: {root_dir} has no MSMT17 image folders and no {names}; expected layout:\n{trees}"
        )
    folder, found_version = found[0]
    require_subfolders(folder, MSMT17_IMAGE_FOLDERS[found_version], f"MSMT17 {found_version}", trees)
    return folder, found_version


def _camid_from_name(relative_path: str) -> int | None:
    fields = os.path.basename(relative_path).split("_")
    if len(fields) < 3 or not fields[2].isdigit():
        return None
    camera = int(fields[2])
    return camera - 1 if 1 <= camera <= MSMT17_NUM_CAMERAS else None


def read_msmt17_list(list_file: Path, image_folder: Path, check_files: bool = True) -> list[ImageRecord]:
    """Records of one list file, in file order; paths are ``image_folder / <relative path>``.

    A malformed line (not two fields, pid not an integer ≥ 0, camera field not 1..15) is a ValueError naming
    the file and line number. With ``check_files`` every listed image is checked with one ``os.path.isfile``
    (about a second for all of MSMT17 on a local disk); missing ones are a FileNotFoundError.
    """
    if not list_file.is_file():
        raise FileNotFoundError(f"MSMT17: list file {list_file} is missing; expected lines {LIST_LINE_HELP}")
    records = []
    missing: list[str] = []
    with open(list_file, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.split()
            pid_text = fields[1] if len(fields) == 2 else ""
            camid = _camid_from_name(fields[0]) if len(fields) == 2 else None
            if not pid_text.isdigit() or camid is None:
                raise ValueError(
                    f"{list_file}, line {line_number}: expected {LIST_LINE_HELP} (pid ≥ 0, camera "
                    f"1..{MSMT17_NUM_CAMERAS}), got {line.rstrip()!r}"
                )
            path = os.path.join(image_folder, fields[0])
            if check_files and not os.path.isfile(path):
                missing.append(f"line {line_number}: {path}")
            records.append(ImageRecord(path=path, pid=int(pid_text), camid=camid))
    if missing:
        shown = "\n  ".join(missing[:MISSING_FILES_SHOWN])
        raise FileNotFoundError(
            f"MSMT17: {len(missing)} image(s) listed in {list_file} do not exist under {image_folder}, "
            f"e.g.\n  {shown}"
        )
    if not records:
        raise ValueError(f"MSMT17: list file {list_file} has no entries; expected lines {LIST_LINE_HELP}")
    return records


def read_msmt17(
    root: str | os.PathLike,
    *,
    version: str | None = None,
    combine_train_val: bool = False,
    check_files: bool = True,
) -> ReidDataset:
    """MSMT17 (1,041 train ids / 30,248 images; 11,659 query; 82,161 gallery; 15 cameras).

    ``combine_train_val`` appends ``list_val.txt`` to train (32,621 images; pre-training uses it) and relabels
    train + val pids jointly; ``list_val.txt`` is only read then. ``check_files``: see ``read_msmt17_list``.
    """
    for option, value in (("combine_train_val", combine_train_val), ("check_files", check_files)):
        if not isinstance(value, bool):
            raise ValueError(f"{option} must be a bool, got {value!r}")
    folder, found_version = resolve_msmt17_folder(root, version)
    train_folder, test_folder = (folder / sub for sub in MSMT17_IMAGE_FOLDERS[found_version])
    train = read_msmt17_list(folder / "list_train.txt", train_folder, check_files)
    if combine_train_val:
        train += read_msmt17_list(folder / "list_val.txt", train_folder, check_files)
    return ReidDataset(
        name=f"msmt17_{found_version.lower()}",
        root=str(folder),
        train=relabel_pids(sorted(train, key=_by_path)),
        query=sorted(read_msmt17_list(folder / "list_query.txt", test_folder, check_files), key=_by_path),
        gallery=sorted(read_msmt17_list(folder / "list_gallery.txt", test_folder, check_files), key=_by_path),
    )


def _by_path(record: ImageRecord) -> str:
    return record.path
