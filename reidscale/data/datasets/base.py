"""Records every dataset reader returns, the relabelling rule, and the folder checks shared by the readers."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")
SPLITS: tuple[str, ...] = ("train", "query", "gallery")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a benchmark.

    ``pid`` is relabelled to 0..num_train_pids−1 in ``train``; in ``query``/``gallery`` it is the original
    identity (0 = distractor, kept in the gallery only). ``camid`` is 0-based.
    """

    path: str
    pid: int
    camid: int


@dataclass
class ReidDataset:
    """The three standard subsets of a ReID benchmark; ``root`` is the dataset folder that was read."""

    name: str
    root: str
    train: list[ImageRecord] = field(default_factory=list)
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)

    def subset(self, split: str) -> list[ImageRecord]:
        """The records of ``split`` (one of SPLITS)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, split)

    def num_pids(self, split: str) -> int:
        """Distinct pids in ``split`` (the gallery's distractor pid 0 counts as one, as torchreid does)."""
        return len({record.pid for record in self.subset(split)})

    def num_cams(self, split: str) -> int:
        """Distinct cameras in ``split``."""
        return len({record.camid for record in self.subset(split)})

    @property
    def num_train_pids(self) -> int:
        return self.num_pids("train")

    @property
    def num_train_imgs(self) -> int:
        return len(self.train)

    @property
    def num_train_cams(self) -> int:
        return self.num_cams("train")

    @property
    def num_query_pids(self) -> int:
        return self.num_pids("query")

    @property
    def num_query_imgs(self) -> int:
        return len(self.query)

    @property
    def num_query_cams(self) -> int:
        return self.num_cams("query")

    @property
    def num_gallery_pids(self) -> int:
        return self.num_pids("gallery")

    @property
    def num_gallery_imgs(self) -> int:
        return len(self.gallery)

    @property
    def num_gallery_cams(self) -> int:
        return self.num_cams("gallery")

    def summary(self) -> str:
        """A small table of ids / images / cameras per subset, the one torchreid prints after loading."""
        header = f"  {'subset':<8}| {'# ids':>6} | {'# images':>8} | {'# cameras':>9}"
        rule = "  " + "-" * (len(header) - 2)
        rows = []
        for split in SPLITS:
            ids, images, cameras = self.num_pids(split), len(self.subset(split)), self.num_cams(split)
            rows.append(f"  {split:<8}| {ids:>6} | {images:>8} | {cameras:>9}")
        return "\n".join([f"=> {self.name} ({self.root})", rule, header, rule, *rows, rule])


def relabel_pids(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Map the original pids to 0..n−1 in ascending order of original pid; record order is kept."""
    records = list(records)
    new_label = {pid: label for label, pid in enumerate(sorted({record.pid for record in records}))}
    return [ImageRecord(record.path, new_label[record.pid], record.camid) for record in records]


def is_image_name(file_name: str) -> bool:
    """True for a visible file name with an image extension (IMAGE_EXTENSIONS, any case)."""
    return not file_name.startswith(".") and os.path.splitext(file_name)[1].lower() in IMAGE_EXTENSIONS


def layout_tree(top: str, entries: Sequence[tuple[str, str]]) -> str:
    """Draw an expected folder layout: ``entries`` are (name, note) pairs under the heading ``top``."""
    width = max(len(name) for name, _ in entries)
    lines = [f"  {top}"]
    for index, (name, note) in enumerate(entries):
        branch = "└──" if index == len(entries) - 1 else "├──"
        lines.append(f"  {branch} {name:<{width}}  {note}".rstrip())
    return "\n".join(lines)


def absolute_folder(path: str | os.PathLike, what: str, tree: str) -> Path:
    """``path`` made absolute; FileNotFoundError naming ``what``, path and layout when it is not a folder."""
    folder = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"{what} {folder} {state}; expected layout:\n{tree}")
    return folder


def resolve_dataset_folder(
    root: str | os.PathLike, required: Sequence[str], canonical_names: Sequence[str], label: str, tree: str
) -> Path:
    """Find the folder holding the ``required`` sub-folders: ``root`` itself or ``root/<canonical name>``.

    ``root`` counts as the dataset folder as soon as it holds one of the required sub-folders (then a missing
    one is an error about ``root``); otherwise the first ``canonical_names`` child that exists is used.
    """
    root_dir = absolute_folder(root, f"{label} root", tree)
    candidates = [root_dir, *(root_dir / name for name in canonical_names)]
    for folder in candidates:
        if folder == root_dir and not any((root_dir / sub).is_dir() for sub in required):
            continue
        if folder.is_dir():
            require_subfolders(folder, required, label, tree)
            return folder
    places = " or ".join(str(folder) for folder in candidates)
    raise FileNotFoundError(f"{label}: found no dataset folder at {places}; expected layout:\n{tree}")


def require_subfolders(folder: Path, required: Sequence[str], label: str, tree: str) -> None:
    """FileNotFoundError naming every sub-folder of ``required`` that ``folder`` lacks."""
    missing = [sub for sub in required if not (folder / sub).is_dir()]
    if missing:
        names = ", ".join(f"{sub}/" for sub in missing)
        raise FileNotFoundError(f"{label}: {folder} lacks {names}; expected layout:\n{tree}")
