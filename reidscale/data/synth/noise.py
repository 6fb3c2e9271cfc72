"""Tracker noise: turn the true per-person boxes of a video into the tracklets a real tracker would output.

Order of operations (each step draws from the same generator, so the result is a function of the seed):

1. *Crossings → identity switches.* A crossing of persons i and j is the first frame ``f`` at which both are
   visible with IoU ≥ ``crossing_iou`` while both were already visible at ``f - 1``. With probability
   ``switch_prob`` the two tracks swap owners from ``f`` on. A person takes part in at most one switch per
   frame, so every switch adds exactly one identity change to each of the two tracks: in the ground truth,
   ``rows - tracks = 2 · switches``.
2. *Fragmentation.* With probability ``fragment_prob`` a track is cut, at a random frame where its identity
   does not change, into two track ids: ``person tracks - distinct identities = fragments``.
3. *Non-person tracklets.* Binomial(visible persons, ``false_positive_rate``) short tracks (3–15 frames) on
   the camera's clutter boxes; their identity is -1.
4. *Jitter* of the box corners (σ = ``jitter`` · box height), rounding and clipping into the frame
   (w, h ≥ 1). Track ids are renumbered 1..n in order of first frame, so the id carries no hint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import NoiseConfig

NON_PERSON = -1


@dataclass
class Track:
    """A tracklet before jitter: frames (n,) 0-based ascending, identities (n,), boxes (n, 4) x0y0x1y1."""

    frames: np.ndarray
    identities: np.ndarray
    boxes: np.ndarray


@dataclass
class TrackerOutput:
    """One video's tracker output.

    mot:    int64/float rows (N, 7): frame (1-based), track id, x, y, w, h (ints inside the frame), confidence
    ground_truth: (track id, identity, first frame, last frame) per constant-identity segment (1-based frames)
    counts: crossings, switches, fragments, false_positives, persons, tracks, boxes
    """

    mot: list[tuple[int, int, int, int, int, int, float]]
    ground_truth: list[tuple[int, int, int, int]]
    counts: dict[str, int] = field(default_factory=dict)


def pairwise_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU of matching rows of two (T, 4) x0y0x1y1 box arrays; returns (T,)."""
    inter_w = np.clip(np.minimum(first[:, 2], second[:, 2]) - np.maximum(first[:, 0], second[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(first[:, 3], second[:, 3]) - np.maximum(first[:, 1], second[:, 1]), 0, None)
    inter = inter_w * inter_h
    area_first = (first[:, 2] - first[:, 0]) * (first[:, 3] - first[:, 1])
    area_second = (second[:, 2] - second[:, 0]) * (second[:, 3] - second[:, 1])
    return inter / np.maximum(area_first + area_second - inter, 1e-9)


def find_crossings(
    boxes: np.ndarray, visible: np.ndarray, iou_threshold: float
) -> list[tuple[int, int, int]]:
    """(frame, i, j) with i < j for each crossing (see the module docstring), sorted by frame.

    boxes: (P, T, 4) x0y0x1y1; visible: (P, T) bool.
    """
    events = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            both = visible[i] & visible[j]
            hits = np.nonzero(both & (pairwise_iou(boxes[i], boxes[j]) >= iou_threshold))[0]
            if hits.size and hits[0] > 0 and both[hits[0] - 1]:
                events.append((int(hits[0]), i, j))
    return sorted(events)


def _switch_owners(
    events: list[tuple[int, int, int]], persons: int, frames: int, prob: float, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """owner (P, T): the track index holding person p at frame t after the random switches; switch count."""
    owner = np.repeat(np.arange(persons)[:, None], frames, axis=1)
    switched_frames: set[tuple[int, int]] = set()
    switches = 0
    for frame, i, j in events:
        if rng.random() >= prob or (frame, i) in switched_frames or (frame, j) in switched_frames:
            continue
        owner[[i, j], frame:] = owner[[j, i], frame:]
        switched_frames.update({(frame, i), (frame, j)})
        switches += 1
    return owner, switches


def _person_tracks(
    owner: np.ndarray, visible: np.ndarray, boxes: np.ndarray, identities: list[int]
) -> list[Track]:
    tracks = []
    for track in range(len(owner)):
        persons, frames = np.nonzero((owner == track) & visible)
        order = np.argsort(frames, kind="stable")
        persons, frames = persons[order], frames[order]
        if frames.size:
            tracks.append(Track(frames, np.asarray(identities)[persons], boxes[persons, frames]))
    return tracks


def _fragment(tracks: list[Track], prob: float, rng: np.random.Generator) -> tuple[list[Track], int]:
    result, fragments = [], 0
    for track in tracks:
        cut_here = rng.random() < prob
        candidates = np.nonzero(track.identities[1:] == track.identities[:-1])[0] + 1
        if not cut_here or candidates.size == 0:
            result.append(track)
            continue
        cut = int(rng.choice(candidates))
        result.append(Track(track.frames[:cut], track.identities[:cut], track.boxes[:cut]))
        result.append(Track(track.frames[cut:], track.identities[cut:], track.boxes[cut:]))
        fragments += 1
    return result, fragments


def _false_positives(
    count: int, clutter: tuple, frames: int, frame_size: tuple[int, int], rng: np.random.Generator
) -> list[Track]:
    width, height = frame_size
    tracks = []
    for _ in range(count):
        if clutter:
            x, y, w, h = clutter[int(rng.integers(len(clutter)))]
        else:
            h = int(rng.uniform(0.3, 0.6) * height)
            w, x, y = max(1, h // 3), int(rng.uniform(0, width - h // 3)), int(rng.uniform(0, height - h))
        length = int(min(rng.integers(3, 16), frames))
        start = int(rng.integers(0, frames - length + 1))
        drift = rng.normal(0.0, 0.8, (length, 4)).cumsum(axis=0) * 0.5
        boxes = np.array([x, y, x + w, y + h], float) + drift
        tracks.append(Track(np.arange(start, start + length), np.full(length, NON_PERSON), boxes))
    return tracks


def _jitter_and_clip(
    boxes: np.ndarray, jitter: float, frame_size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Integer (n, 4) x, y, w, h boxes inside the frame with w, h ≥ 1."""
    width, height = frame_size
    box_height = (boxes[:, 3] - boxes[:, 1])[:, None]
    noisy = np.rint(boxes + rng.standard_normal(boxes.shape) * jitter * box_height).astype(np.int64)
    x0, y0 = np.clip(noisy[:, 0], 0, width - 1), np.clip(noisy[:, 1], 0, height - 1)
    x1 = np.clip(np.maximum(noisy[:, 2], x0 + 1), None, width)
    y1 = np.clip(np.maximum(noisy[:, 3], y0 + 1), None, height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


def _segments(track: Track) -> list[tuple[int, int, int]]:
    """(identity, first frame, last frame) per run of constant identity, 0-based frames."""
    changes = np.nonzero(track.identities[1:] != track.identities[:-1])[0] + 1
    starts, ends = np.r_[0, changes], np.r_[changes, len(track.frames)] - 1
    pairs = zip(starts, ends, strict=True)
    return [(int(track.identities[s]), int(track.frames[s]), int(track.frames[e])) for s, e in pairs]


def apply_tracker_noise(
    boxes: np.ndarray,
    visible: np.ndarray,
    identities: list[int],
    clutter: tuple[tuple[int, int, int, int], ...],
    frame_size: tuple[int, int],
    noise: NoiseConfig,
    rng: np.random.Generator,
) -> TrackerOutput:
    """MOT rows and ground truth of one video from the true boxes (P, T, 4) x0y0x1y1 and visibility (P, T).

    ``identities[p]`` is the corpus-wide identity of person p; ``frame_size`` is (width, height).
    """
    seen = visible.any(axis=1)
    boxes, visible = boxes[seen], visible[seen]
    identities = [identity for identity, keep in zip(identities, seen, strict=True) if keep]
    persons, frames = visible.shape
    events = find_crossings(boxes, visible, noise.crossing_iou)
    owner, switches = _switch_owners(events, persons, frames, noise.switch_prob, rng)
    tracks, fragments = _fragment(_person_tracks(owner, visible, boxes, identities), noise.fragment_prob, rng)
    false_count = int(rng.binomial(persons, noise.false_positive_rate)) if persons else 0
    tracks += _false_positives(false_count, clutter, frames, frame_size, rng)
    tracks.sort(key=lambda track: (int(track.frames[0]), float(track.boxes[0, 0])))
    mot, ground_truth = [], []
    for track_id, track in enumerate(tracks, start=1):
        xywh = _jitter_and_clip(track.boxes, noise.jitter, frame_size, rng)
        low, high = (0.3, 0.6) if track.identities[0] == NON_PERSON else (0.5, 1.0)
        confidences = np.round(rng.uniform(low, high, len(track.frames)), 3)
        for frame, (x, y, w, h), confidence in zip(track.frames, xywh, confidences, strict=True):
            mot.append((int(frame) + 1, track_id, int(x), int(y), int(w), int(h), float(confidence)))
        ground_truth += [
            (track_id, identity, first + 1, last + 1) for identity, first, last in _segments(track)
        ]
    mot.sort(key=lambda row: (row[0], row[1]))
    counts = {
        "persons": persons,
        "crossings": len(events),
        "switches": switches,
        "fragments": fragments,
        "false_positives": false_count,
        "tracks": len(tracks),
        "boxes": len(mot),
    }
    return TrackerOutput(mot, ground_truth, counts)
