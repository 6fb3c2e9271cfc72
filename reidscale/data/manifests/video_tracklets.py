"""Videos + MOT tracklet files → one CropRecord per tracked box.

Layout of ``root``::

    videos/<video>.{mp4,webm,avi,mkv}     one file per video (the stem is the video id)
    tracklets/<video>.txt                 MOT lines 'frame,track_id,x,y,w,h,conf,-1,-1,-1', 1-based frames
    corpus.json                           optional: {"videos": {"<video>": {"camera": 2, ...}, ...}}
    ground_truth.csv                      optional, read by read_ground_truth only

A tracklet is (video, track_id); tracklets are numbered 0..n−1 corpus-wide in sorted (video, track_id) order
(video ids compared as strings, track ids as integers) and that number is both ``pid`` and ``tracklet``.
Only tracklets that keep at least one box are numbered. Records are sorted by (video, track_id, frame).

Validation (see common.py for strict vs skip-and-count): a tracklet file without its video is corrupt
("tracklets_without_video"); a video without a tracklet file has nothing to read and is only counted
("video_without_tracklets"). Each video is probed with PyAV for its frame size and, where the container
stores it (MP4, AVI; not WebM/MKV), its frame count: an unopenable video is corrupt ("corrupt_video"), a box
on a frame past the end is corrupt ("frame_missing"); box repairs and filters are in ``mot.fit_box``. A
tracklet file or video that resolves outside ``root`` through a symlink is corrupt ("path_outside").
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path

from ..datasets.base import absolute_folder, layout_tree, require_subfolders
from ..records import CropRecord, Manifest
from ..video_probe import VideoInfo, VideoOpenError, probe_video
from .common import CorpusRoot, IssuePolicy, ManifestError, dense_labels, inside_corpus
from .mot import MOT_LINE_HELP, TrackBox, fit_box, read_mot_file

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".avi", ".mkv")
CAMERA_PREFIX = re.compile(r"^cam(\d+)_")
CORPUS_TREE = layout_tree(
    "<root>/",
    [
        ("videos/", f"<video>{{{','.join(VIDEO_EXTENSIONS)}}}"),
        ("tracklets/", f"<video>.txt, lines {MOT_LINE_HELP}"),
        ("corpus.json", 'optional: {"videos": {"<video>": {"camera": <int>}}}'),
        ("ground_truth.csv", "optional: video,track_id,identity[,first_frame,last_frame]"),
    ],
)


def _files_by_stem(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """Visible files of ``folder`` with one of ``extensions`` (any case), keyed by stem; two files with the
    same stem are an error naming both."""
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            stem, ext = os.path.splitext(entry.name)
            if entry.name.startswith(".") or ext.lower() not in extensions or not entry.is_file():
                continue
            if stem in found:
                names = f"{found[stem].name} and {entry.name}"
                raise ManifestError(f"{folder}: two files for video {stem!r}: {names}")
            found[stem] = Path(entry.path)
    return found


def read_camera_table(path: Path) -> dict[str, int]:
    """Video id → camera from ``corpus.json`` ({} when the file is absent).

    ``videos`` may be a dict keyed by video id or a list of objects naming the video under "video", "name"
    or "id"; entries without "camera" are left out (their camera then comes from the video name).
    """
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from err
    videos = payload.get("videos", {}) if isinstance(payload, dict) else None
    if isinstance(videos, list):
        videos = {_video_name(path, index, entry): entry for index, entry in enumerate(videos)}
    if not isinstance(videos, dict):
        raise ManifestError(f"{path}: expected an object with 'videos' (an object or a list of objects)")
    cameras = {}
    for video, entry in videos.items():
        if isinstance(entry, dict) and "camera" in entry:
            camera = entry["camera"]
            if isinstance(camera, bool) or not isinstance(camera, int) or camera < -1:
                raise ManifestError(
                    f"{path}: videos[{video!r}].camera = {camera!r}, expected an integer >= -1"
                )
            cameras[str(video)] = camera
    return cameras


def _video_name(path: Path, index: int, entry: object) -> str:
    keys = ("video", "name", "id")
    if isinstance(entry, dict):
        for key in keys:
            if isinstance(entry.get(key), str):
                return entry[key]
    raise ManifestError(f"{path}: videos[{index}] is not an object naming its video under one of {keys}")


def camera_of(video: str, cameras: dict[str, int]) -> int:
    """The camera of ``video``: from corpus.json, else the NN of a ``camNN_`` name prefix, else −1."""
    if video in cameras:
        return cameras[video]
    match = CAMERA_PREFIX.match(video)
    return int(match.group(1)) if match else -1


def _keep_video_boxes(
    boxes: list[TrackBox], path: Path, info: VideoInfo | None, min_box_size: int, policy: IssuePolicy
) -> dict[int, list[tuple[int, tuple[int, int, int, int]]]]:
    """Track id → [(0-based frame, (x, y, w, h))] of the boxes that pass validation."""
    kept: dict[int, list[tuple[int, tuple[int, int, int, int]]]] = defaultdict(list)
    num_frames = info.num_frames if info is not None else None
    for box in boxes:
        if num_frames is not None and box.frame > num_frames:
            message = (
                f"{path}:{box.line}: frame {box.frame} is past the end of the video ({num_frames} frames)"
            )
            policy.corrupt("frame_missing", message, file=path, record=box.line)
            continue
        fitted = fit_box(box, path, info, min_box_size, policy)
        if fitted is not None:
            kept[box.track_id].append((box.frame - 1, fitted))
    return kept


def _check_options(min_box_size: int, frame_stride: int) -> None:
    if not isinstance(min_box_size, int) or min_box_size < 1:
        raise ValueError(f"min_box_size must be an integer >= 1 (pixels), got {min_box_size!r}")
    if not isinstance(frame_stride, int) or frame_stride < 1:
        raise ValueError(f"frame_stride must be an integer >= 1, got {frame_stride!r}")


def _read_tracks(
    folder: Path,
    videos: dict[str, Path],
    tracklet_files: dict[str, Path],
    policy: IssuePolicy,
    probe: bool,
    min_box_size: int,
    frame_stride: int,
) -> dict[tuple[str, int], list[tuple[int, tuple[int, int, int, int]]]]:
    """(video, track id) → its kept [(0-based frame, (x, y, w, h))] in frame order, strided."""
    tracks: dict[tuple[str, int], list[tuple[int, tuple[int, int, int, int]]]] = {}
    corpus = CorpusRoot(folder)
    for video, tracklet_path in sorted(tracklet_files.items()):
        if inside_corpus(corpus, tracklet_path, policy, str(folder)) is None:
            continue
        if video not in videos:
            expected = f"{folder / 'videos' / video}{{{','.join(VIDEO_EXTENSIONS)}}}"
            message = f"{tracklet_path}: no video {expected}"
            policy.corrupt("tracklets_without_video", message, file=tracklet_path)
            continue
        if inside_corpus(corpus, videos[video], policy, str(folder)) is None:
            continue
        try:
            info = probe_video(videos[video], index_frames=False) if probe else None
        except VideoOpenError as err:
            policy.corrupt("corrupt_video", f"{err} (tracklets in {tracklet_path})", file=videos[video])
            continue
        boxes = read_mot_file(tracklet_path, policy)
        for track_id, frames in _keep_video_boxes(boxes, tracklet_path, info, min_box_size, policy).items():
            tracks[(video, track_id)] = sorted(frames)[::frame_stride]
    return tracks


def read_video_tracklets(
    root: str | os.PathLike,
    *,
    strict: bool = True,
    min_box_size: int = 1,
    frame_stride: int = 1,
    probe: bool = True,
) -> Manifest:
    """Read a video corpus (layout in the module docstring) into a Manifest of video-frame crop records.

    ``min_box_size``: boxes whose clipped width or height is smaller (pixels) are skipped and counted.
    ``frame_stride``: keep the 1st, (1+n)th, (1+2n)th … box of each tracklet in frame order (not counted).
    ``probe``: open each video with PyAV to clip boxes to the frame and check frame numbers; False trusts
    the tracklet files (only negative coordinates are clipped) and is much faster on a large corpus.
    ``strict``: see common.py; False skips and counts corrupt lines, videos and files.
    """
    _check_options(min_box_size, frame_stride)
    folder = absolute_folder(root, "video corpus root", CORPUS_TREE)
    require_subfolders(folder, ["videos", "tracklets"], "video corpus", CORPUS_TREE)
    videos = _files_by_stem(folder / "videos", VIDEO_EXTENSIONS)
    tracklet_files = _files_by_stem(folder / "tracklets", (".txt",))
    if not tracklet_files:
        raise ManifestError(
            f"{folder / 'tracklets'} holds no tracklet files; expected layout:\n{CORPUS_TREE}"
        )
    cameras = read_camera_table(folder / "corpus.json")
    manifest = Manifest(name=f"video_tracklets:{folder}", records=[])
    policy = IssuePolicy(manifest, strict)
    for video in sorted(set(videos) - set(tracklet_files)):
        policy.filtered("video_without_tracklets", file=videos[video])
    tracks = _read_tracks(folder, videos, tracklet_files, policy, probe, min_box_size, frame_stride)
    labels = dense_labels(tracks)
    for key in sorted(tracks):
        video, label = key[0], labels[key]
        source, camera = str(videos[video]), camera_of(video, cameras)
        manifest.records.extend(
            CropRecord(source, frame, box, label, camera, video, label) for frame, box in tracks[key]
        )
    return manifest
