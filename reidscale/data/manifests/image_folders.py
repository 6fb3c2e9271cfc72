"""Manifests of person-crop image files: LUPerson-NL folders, CION-AL (its released folder or any JSON list in
its format), Market-format folders.

Every record is a whole image (``frame`` −1, ``box`` WHOLE_IMAGE); images are never opened here (corrupt
JPEGs are skipped and counted by the decoders).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from ..datasets import load_dataset, read_market_style_folder
from ..datasets.base import absolute_folder, is_image_name, layout_tree
from ..datasets.market import MARKET_SPLIT_FOLDERS
from ..records import WHOLE_IMAGE, CropRecord, Manifest
from .common import CorpusRoot, IssuePolicy, ManifestError, absolute_path, dense_labels, inside_corpus

LUPERSON_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)\.[A-Za-z]+$")
LUPERSON_TREE = layout_tree(
    "<root>/",
    [
        ("<video>/ or <country>/<city>/<video>/", "a folder per video, at any depth, any names"),
        ("  <pid>_<frame>_<obj>.jpg", "integers"),
    ],
)
CION_LIST_KEYS: tuple[str, ...] = ("images", "data", "annotations", "items")
CION_ENTRY_HELP = '{"file_path": "<path>", "id": <integer>[, "camera": <integer>, "video": "<name>"]}'
#: the annotation file of the released CION-AL folder; the second spelling is the default path of CION's
#: pre-training script
CION_AL_ANNOTATIONS: tuple[str, ...] = ("cional_annos.json", "cinoal_annos.json")
CION_AL_TREE = layout_tree(
    "<CION_AL>/",
    [
        ("sec0/ ... sec129/", "the images"),
        ("cional_annos.json", '[{"file_path": "<path under CION_AL>", "id": <integer>}, ...]'),
    ],
)


def _image_folders(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """``(path under folder with "/" separators, sorted image files directly inside)`` for ``folder`` ("")
    and every folder below it, depth first in name order. Hidden entries are skipped; a folder reached
    twice (through a symlink) is visited once."""
    seen: set[str] = set()

    def visit(path: str, relative: str) -> Iterator[tuple[str, list[str]]]:
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        with os.scandir(path) as scan:
            entries = sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
        yield relative, [e.path for e in entries if e.is_file() and is_image_name(e.name)]
        for entry in entries:
            if entry.is_dir():
                yield from visit(entry.path, f"{relative}/{entry.name}" if relative else entry.name)

    yield from visit(str(folder), "")


def read_luperson_nl(root: str | os.PathLike, *, strict: bool = True) -> Manifest:
    """LUPerson-NL ``<root>/.../<video>/<pid>_<frame>_<obj>.jpg`` → one record per image.

    Every folder below ``root`` that directly holds images is one video, named by its path under the root
    (``vid_a``, or ``cn/beijing/vid_a`` in the released country/city/video tree). A tracklet is (video, pid);
    tracklets are numbered 0..n−1 in sorted (video, pid) order and the number is both ``pid`` and
    ``tracklet``; ``camera`` is −1 (the layout has none). Records are sorted by (video, pid, frame, obj).
    Hidden and non-image files are ignored; an image whose name does not parse ("bad_name"), that lies
    directly in ``root`` ("misplaced_image") or that resolves outside ``root`` through a symlink
    ("path_outside") is an error naming the file (strict) or skipped and counted.
    """
    folder = absolute_folder(root, "LUPerson-NL root", LUPERSON_TREE)
    manifest = Manifest(name=f"luperson_nl:{folder}", records=[])
    policy = IssuePolicy(manifest, strict)
    corpus = CorpusRoot(folder)
    parsed: list[tuple[str, int, int, int, str]] = []
    num_images = 0
    for video, image_paths in _image_folders(folder):
        num_images += len(image_paths)
        if not video:
            for path in image_paths:
                message = f"{path}: image outside a video folder; expected layout:\n{LUPERSON_TREE}"
                policy.corrupt("misplaced_image", message, file=path)
            continue
        inside = [p for p in image_paths if inside_corpus(corpus, p, policy, str(folder)) is not None]
        parsed.extend(_parse_luperson_names(video, inside, policy))
    if num_images == 0:
        raise ManifestError(f"{folder} holds no images; expected layout:\n{LUPERSON_TREE}")
    labels = dense_labels((video, pid) for video, pid, *_ in parsed)
    for video, pid, _, _, path in sorted(parsed):
        label = labels[(video, pid)]
        manifest.records.append(CropRecord(path, -1, WHOLE_IMAGE, label, -1, video, label))
    return manifest


def _parse_luperson_names(
    video: str, image_paths: list[str], policy: IssuePolicy
) -> list[tuple[str, int, int, int, str]]:
    parsed = []
    for path in image_paths:
        match = LUPERSON_NAME.match(os.path.basename(path))
        if match is None:
            message = f"{path}: file name is not <pid>_<frame>_<obj>.<ext> with integers"
            policy.corrupt("bad_name", message, file=path)
            continue
        pid, frame, obj = (int(group) for group in match.groups())
        parsed.append((video, pid, frame, obj, path))
    return parsed


def _cion_entries(path: Path) -> list:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from err
    if isinstance(payload, dict):
        key = next((key for key in CION_LIST_KEYS if isinstance(payload.get(key), list)), None)
        if key is None:
            raise ManifestError(f"{path}: an object must hold the entry list under one of {CION_LIST_KEYS}")
        payload = payload[key]
    if not isinstance(payload, list):
        raise ManifestError(f"{path}: expected a list of {CION_ENTRY_HELP} (or an object holding one)")
    return payload


def _cion_id(value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"key 'id' = {value!r}, expected an integer (or a string of one)")
    return value


def _parse_cion_entry(entry: object) -> tuple[str, int, int, str]:
    """(file path as written, id, camera, video) of one entry; ValueError naming the key on bad content."""
    if not isinstance(entry, dict):
        raise ValueError(f"is a {type(entry).__name__}, expected an object {CION_ENTRY_HELP}")
    for key in ("file_path", "id"):
        if key not in entry:
            raise ValueError(f"lacks key {key!r}")
    file_path = entry["file_path"]
    if not isinstance(file_path, str) or not file_path.strip():
        raise ValueError(f"key 'file_path' = {file_path!r}, expected a non-empty string")
    camera = entry.get("camera", -1)
    if isinstance(camera, bool) or not isinstance(camera, int) or camera < -1:
        raise ValueError(f"key 'camera' = {camera!r}, expected an integer >= -1")
    video = entry.get("video", "")
    if not isinstance(video, str):
        raise ValueError(f"key 'video' = {video!r}, expected a string")
    return file_path, _cion_id(entry["id"]), camera, video


def read_cion_json(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, *, strict: bool = True
) -> Manifest:
    """A CION-AL style JSON list of ``{"file_path", "id"}`` → one whole-image record per entry.

    The list may also sit in an object under the first of CION_LIST_KEYS that holds a list. Relative paths
    are resolved against ``image_root``, else the JSON file's folder: that folder is the corpus root, and a
    path leaving it (``..``, absolute elsewhere, ``~``, a symlink out) is an error naming the entry (strict)
    or skipped and counted as "path_outside". ids (integers or strings of integers)
    are relabelled 0..n−1 in ascending order; optional "camera" (default −1) and "video" keys are kept.
    Records are sorted by (pid, path). A bad entry ("bad_entry") or a repeated file path ("duplicate_path",
    the first one is kept) is an error naming the entry index and key (strict) or skipped and counted.
    """
    json_path = absolute_path(path)
    if not json_path.is_file():
        raise FileNotFoundError(f"CION JSON list {json_path} does not exist")
    corpus = CorpusRoot(image_root if image_root is not None else json_path.parent)
    manifest = Manifest(name=f"cion_json:{json_path}", records=[])
    policy = IssuePolicy(manifest, strict)
    parsed: dict[str, tuple[int, int, str]] = {}
    for index, entry in enumerate(_cion_entries(json_path)):
        try:
            file_path, identity, camera, video = _parse_cion_entry(entry)
        except ValueError as err:
            policy.corrupt("bad_entry", f"{json_path}: entry {index} {err}", file=json_path, record=index)
            continue
        where = f"{json_path}: entry {index} key 'file_path'"
        source = inside_corpus(corpus, file_path, policy, where, file=json_path, record=index)
        if source is None:
            continue
        if source in parsed:
            message = f"{json_path}: entry {index} key 'file_path' repeats {source}"
            policy.corrupt("duplicate_path", message, file=json_path, record=index)
            continue
        parsed[source] = (identity, camera, video)
    labels = dense_labels(identity for identity, _, _ in parsed.values())
    records = [
        CropRecord(source, -1, WHOLE_IMAGE, labels[identity], camera, video)
        for source, (identity, camera, video) in parsed.items()
    ]
    manifest.records = sorted(records, key=lambda record: (record.pid, record.source))
    return manifest


def read_cion_al(path: str | os.PathLike, *, strict: bool = True) -> Manifest:
    """The released CION-AL folder (``sec*/`` image folders + ``cional_annos.json``) → ``read_cion_json``.

    ``path`` is the CION-AL folder, where the annotation file is the first of CION_AL_ANNOTATIONS found, or
    the annotation file itself. Its entries' ``file_path``s are relative to the annotation file's folder
    (CION's pre-training code joins them to the CION-AL folder), which is the corpus root; ids are
    relabelled 0..n−1 in ascending order. Errors and skips are those of ``read_cion_json``.
    """
    location = absolute_path(path)
    if location.is_dir():
        found = [location / name for name in CION_AL_ANNOTATIONS if (location / name).is_file()]
        json_path = found[0] if found else None
        if json_path is None:
            raise FileNotFoundError(
                f"CION-AL folder {location} holds no {' or '.join(CION_AL_ANNOTATIONS)}; expected layout:\n"
                f"{CION_AL_TREE}"
            )
    elif location.is_file():
        json_path = location
    else:
        raise FileNotFoundError(f"CION-AL folder {location} does not exist; expected layout:\n{CION_AL_TREE}")
    manifest = read_cion_json(json_path, strict=strict)
    manifest.name = f"cion_al:{json_path}"
    return manifest


def read_market_manifest(
    root: str | os.PathLike, split: str = "train", *, dataset: str | None = None
) -> Manifest:
    """One split of a Market-format benchmark → whole-image records with camera (0-based) and pid.

    ``dataset`` None reads ``root/<split folder>`` (bounding_box_train, query, bounding_box_test) with
    ``read_market_style_folder``; a name of ``reidscale.data.datasets.DATASET_NAMES`` reads ``root``
    with that dataset's reader. Train pids are relabelled 0..n−1, query/gallery keep the original pids
    (gallery distractors pid 0); junk (pid −1) is dropped. Sorted by path; always strict (a benchmark): an
    image whose path leaves ``root`` (a symlink out, or a list-file entry with ``..``) is a ManifestError.
    """
    if split not in MARKET_SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {tuple(MARKET_SPLIT_FOLDERS)}, got {split!r}")
    if dataset is None:
        folder = absolute_path(root) / MARKET_SPLIT_FOLDERS[split]
        images = read_market_style_folder(
            folder, relabel=split == "train", keep_distractors=split == "gallery"
        )
    else:
        images = load_dataset(dataset, root).subset(split)
    manifest = Manifest(name=f"market:{split}:{absolute_path(root)}", records=[])
    corpus, policy = CorpusRoot(root), IssuePolicy(manifest, strict=True)
    where = f"{dataset or 'market'} {split} split of {corpus.path}"
    for image in images:
        inside_corpus(corpus, image.path, policy, where)  # the policy is strict: raises when outside
        manifest.records.append(CropRecord(image.path, -1, WHOLE_IMAGE, image.pid, image.camid))
    return manifest
