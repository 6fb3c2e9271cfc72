"""Synthetic corpus: layout, decodability, annotation validity, noise rates, market folder, determinism, and
that identities are recognisable across cameras. Counts are recomputed from the written files, independently
of the generator's own bookkeeping, and compared with it and with the configured rates."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidscale.data.datasets import read_market1501
from reidscale.data.datasets.market import parse_market_name
from reidscale.data.synth import SCALES, NoiseConfig, SynthScale, build_corpus
from reidscale.data.synth import assign_identities as schedule_identities
from reidscale.data.synth.noise import apply_tracker_noise
from reidscale.data.synth.people import (
    GAIT_PHASES,
    SMALLEST_ALPHA,
    SpriteCache,
    random_appearance,
    render_person,
    tight_box,
)
from reidscale.data.synth.render import VideoRenderer
from reidscale.data.synth.scene import HEIGHT_STEP, SensorNoise, make_camera, plan_walkers, render_frame

av = pytest.importorskip("av")

NOISY_TINY = SCALES["tiny"].with_overrides(
    name="tiny-noisy",
    videos_per_camera=4,
    frames_per_video=60,
    people_per_video=6,
    frame_width=192,
    frame_height=108,
    market_images_per_camera=1,
    noise={"switch_prob": 0.5, "fragment_prob": 0.3, "false_positive_rate": 0.25},
)


@pytest.fixture(scope="module")
def tiny_mjpeg(tiny_corpus: Path) -> Path:
    return tiny_corpus


def load_meta(root: Path) -> dict:
    return json.loads((root / "corpus.json").read_text())


def load_ground_truth(root: Path) -> list[dict[str, int | str]]:
    with open(root / "ground_truth.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{key: value if key == "video" else int(value) for key, value in row.items()} for row in rows]


def parse_mot(path: Path, frame_size: tuple[int, int], num_frames: int) -> np.ndarray:
    """(N, 6) int rows frame, track, x, y, w, h; asserts the MOT format and boxes inside the frame."""
    width, height = frame_size
    rows = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split(",")
        assert len(fields) == 10 and fields[7:] == ["-1", "-1", "-1"], f"{path}:{line_number}: {line}"
        frame, track, x, y, w, h = (int(value) for value in fields[:6])
        assert 0.0 < float(fields[6]) <= 1.0
        assert 1 <= frame <= num_frames and track >= 1, f"{path}:{line_number}"
        assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= width and y + h <= height, (
            f"{path}:{line_number}"
        )
        rows.append((frame, track, x, y, w, h))
    return np.array(rows, dtype=np.int64).reshape(-1, 6)


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])
def test_tiny_corpus_files_decode_and_annotations_are_valid(tmp_path, codec):
    summary = build_corpus(tmp_path, "tiny", seed=1, codec=codec)
    meta = load_meta(tmp_path)
    scale = SCALES["tiny"]
    size = (scale.frame_width, scale.frame_height)
    assert meta["codec"] == codec and meta["frame_size"] == list(size)
    assert summary.num_videos == len(meta["videos"]) == scale.num_videos
    extension = {"h264": ".mp4", "vp9": ".webm", "mjpeg": ".avi"}[codec]
    ground_truth = load_ground_truth(tmp_path)
    for video in meta["videos"]:
        assert video["video"] == f"cam{video['camera']:02d}_v{video['order'] // scale.num_cameras:03d}"
        frames = decode(tmp_path / video["file"])
        assert video["file"].endswith(extension)
        assert len(frames) == scale.frames_per_video
        assert frames[0].shape == (scale.frame_height, scale.frame_width, 3)
        mot = parse_mot(tmp_path / "tracklets" / f"{video['video']}.txt", size, len(frames))
        assert mot[:, 0].max() <= len(frames)
        segments = [row for row in ground_truth if row["video"] == video["video"]]
        assert {row["track_id"] for row in segments} == set(mot[:, 1].tolist())
        for track in set(mot[:, 1].tolist()):
            track_frames = mot[mot[:, 1] == track, 0]
            rows = sorted(
                (row["first_frame"], row["last_frame"]) for row in segments if row["track_id"] == track
            )
            assert rows[0][0] == track_frames.min() and rows[-1][1] == track_frames.max()
        assert len(mot) == video["boxes"]
    assert set(load_meta(tmp_path)["videos"][0]) >= {
        "camera",
        "order",
        "switches",
        "fragments",
        "false_positives",
    }


def test_every_pretrain_identity_is_scheduled_in_two_cameras():
    for name, seed in [("tiny", 0), ("tiny", 1), ("demo", 0), ("demo", 1), ("large", 0)]:
        scale = SCALES[name]
        schedule = schedule_identities(scale, np.random.default_rng(seed))
        assert all(len(people) == len(set(people)) == scale.people_per_video for people in schedule)
        cameras = defaultdict(set)
        for order, people in enumerate(schedule):
            for identity in people:
                cameras[identity].add(order % scale.num_cameras)
        assert set(cameras) == set(range(scale.num_pretrain_identities))
        assert min(len(seen) for seen in cameras.values()) >= 2


def gt_derived_counts(root: Path) -> dict[str, int]:
    """Switches, fragments and non-person tracklets recomputed from ground_truth.csv alone.

    Per video: a switch adds one segment to each of two tracks (rows − tracks = 2·switches), a fragment adds
    one person track beyond the distinct identities, a non-person tracklet is a row with identity −1.
    """
    per_video = defaultdict(list)
    for row in load_ground_truth(root):
        per_video[row["video"]].append(row)
    counts = defaultdict(int)
    for rows in per_video.values():
        person_rows = [row for row in rows if row["identity"] >= 0]
        person_tracks = {row["track_id"] for row in person_rows}
        assert (len(person_rows) - len(person_tracks)) % 2 == 0
        counts["switches"] += (len(person_rows) - len(person_tracks)) // 2
        counts["fragments"] += len(person_tracks) - len({row["identity"] for row in person_rows})
        counts["false_positives"] += sum(row["identity"] < 0 for row in rows)
        counts["persons"] += len({row["identity"] for row in person_rows})
    return counts


def within_binomial(observed: int, trials: int, prob: float, sigmas: float = 4.0) -> bool:
    """|observed − n·p| ≤ 4σ + 1 for Binomial(n, p): fails by chance with probability < 1e-4."""
    return abs(observed - trials * prob) <= sigmas * math.sqrt(trials * prob * (1 - prob)) + 1


def test_noise_in_ground_truth_matches_bookkeeping_and_configured_rates(tmp_path):
    build_corpus(tmp_path, NOISY_TINY, seed=5, codec="mjpeg")
    totals = load_meta(tmp_path)["noise_counts"]
    derived = gt_derived_counts(tmp_path)
    for key in ("switches", "fragments", "false_positives", "persons"):
        assert derived[key] == totals[key], key
    noise = NOISY_TINY.noise
    # The 4σ bands must be narrow enough to reject a rate off by half, or the check would prove nothing.
    assert totals["crossings"] >= 30 and totals["persons"] >= 60
    assert 4 * math.sqrt(totals["crossings"] * 0.25) < 0.5 * totals["crossings"] * noise.switch_prob + 2
    assert within_binomial(derived["switches"], totals["crossings"], noise.switch_prob)
    assert within_binomial(derived["fragments"], totals["persons"], noise.fragment_prob)
    assert within_binomial(derived["false_positives"], totals["persons"], noise.false_positive_rate)


def crossing_pair(frames: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """Two 20×40 boxes on one row moving towards each other at 2 px/frame: A from x=0, B from x=80."""
    t = np.arange(frames, dtype=float)
    boxes = np.zeros((2, frames, 4))
    boxes[0] = np.stack([2 * t, np.full(frames, 10.0), 2 * t + 20, np.full(frames, 50.0)], axis=1)
    boxes[1] = np.stack([80 - 2 * t, np.full(frames, 10.0), 100 - 2 * t, np.full(frames, 50.0)], axis=1)
    return boxes, np.ones((2, frames), bool)


def test_switch_happens_at_the_crossing_frame():
    boxes, visible = crossing_pair()
    # Overlap o(t) = 20 − |80 − 4t| (both 20 wide); IoU = o / (40 − o) ≥ 0.3 ⇔ o ≥ 12/1.3 = 9.23 ⇔ t ≥ 17.31.
    crossing_frame = 18
    no_jitter = {"jitter": 0.0, "fragment_prob": 0.0, "false_positive_rate": 0.0}
    switched = apply_tracker_noise(
        boxes,
        visible,
        [7, 9],
        (),
        (120, 60),
        NoiseConfig(switch_prob=1.0, **no_jitter),
        np.random.default_rng(0),
    )
    kept = apply_tracker_noise(
        boxes,
        visible,
        [7, 9],
        (),
        (120, 60),
        NoiseConfig(switch_prob=0.0, **no_jitter),
        np.random.default_rng(0),
    )
    assert switched.counts["crossings"] == kept.counts["crossings"] == 1
    assert sorted(kept.ground_truth) == [(1, 7, 1, 21), (2, 9, 1, 21)]
    last = crossing_frame  # 1-based last frame before the switch = 0-based crossing frame
    assert sorted(switched.ground_truth) == [
        (1, 7, 1, last),
        (1, 9, last + 1, 21),
        (2, 7, last + 1, 21),
        (2, 9, 1, last),
    ]
    first_box = next(row for row in switched.mot if row[0] == 1 and row[1] == 1)
    assert first_box[2:6] == (0, 10, 20, 40)


def test_switch_and_fragment_rates_over_many_videos():
    boxes, visible = crossing_pair()
    config = NoiseConfig(switch_prob=0.3, fragment_prob=0.2, false_positive_rate=0.1)
    rng = np.random.default_rng(11)
    totals = defaultdict(int)
    videos = 400
    for _ in range(videos):
        output = apply_tracker_noise(boxes, visible, [1, 2], ((5, 5, 10, 30),), (120, 60), config, rng)
        for key, value in output.counts.items():
            totals[key] += value
        for frame, _, x, y, w, h, _ in output.mot:
            assert (
                1 <= frame <= 21 and x >= 0 and y >= 0 and x + w <= 120 and y + h <= 60 and w >= 1 and h >= 1
            )
    assert totals["crossings"] == videos
    assert within_binomial(totals["switches"], videos, 0.3)
    assert within_binomial(totals["fragments"], 2 * videos, 0.2)
    assert within_binomial(totals["false_positives"], 2 * videos, 0.1)


def test_market_folder_is_readable_and_disjoint_from_pretraining(tiny_mjpeg):
    scale = SCALES["tiny"]
    dataset = read_market1501(tiny_mjpeg / "market")
    pretrain = {row["identity"] for row in load_ground_truth(tiny_mjpeg) if row["identity"] >= 0}
    names = {
        split: sorted((tiny_mjpeg / "market" / split).glob("*.jpg"))
        for split in ("bounding_box_train", "query", "bounding_box_test")
    }
    parsed = {split: [parse_market_name(path) for path in paths] for split, paths in names.items()}
    train_pids = {pid for pid, _ in parsed["bounding_box_train"]}
    test_pids = {pid for pid, _ in parsed["query"] + parsed["bounding_box_test"] if pid > 0}
    assert (
        len(train_pids) == scale.num_market_train_identities
        and len(test_pids) == scale.num_market_test_identities
    )
    assert not train_pids & test_pids
    assert not {pid - 1 for pid in train_pids | test_pids} & pretrain
    assert dataset.num_train_pids == len(train_pids) and dataset.num_query_pids == len(test_pids)
    assert {pid for pid, _ in parsed["bounding_box_test"]} >= {0, -1}
    assert max(camera for split in parsed.values() for _, camera in split) <= min(scale.num_cameras, 6)
    for query in dataset.query:
        assert any(g.pid == query.pid and g.camid != query.camid for g in dataset.gallery), query
    assert len(names["query"]) == len(set(names["query"]))
    with Image.open(names["query"][0]) as image:
        assert image.size == (scale.market_crop_size[1], scale.market_crop_size[0])


def annotation_bytes(root: Path) -> dict[str, bytes]:
    paths = [
        root / "ground_truth.csv",
        root / "corpus.json",
        *sorted((root / "tracklets").glob("*.txt")),
        *sorted((root / "market").rglob("*.jpg")),
    ]
    return {str(path.relative_to(root)): path.read_bytes() for path in paths}


def test_same_seed_same_corpus_different_seed_different(tiny_mjpeg, tmp_path):
    again = tmp_path / "again"  # built in 2 worker processes: the output must not depend on that either
    build_corpus(again, "tiny", seed=3, codec="mjpeg", workers=2)
    assert annotation_bytes(again) == annotation_bytes(tiny_mjpeg)
    for video in load_meta(again)["videos"]:
        first, second = decode(again / video["file"]), decode(tiny_mjpeg / video["file"])
        assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    other = tmp_path / "other"
    build_corpus(other, "tiny", seed=4, codec="mjpeg")
    assert (other / "ground_truth.csv").read_bytes() != (again / "ground_truth.csv").read_bytes()
    video = load_meta(other)["videos"][0]["file"]
    assert not np.array_equal(decode(other / video)[0], decode(again / video)[0])


def torso_colours(root: Path) -> list[tuple[int, int, np.ndarray]]:
    """(identity, camera, mean RGB of the torso band) for unoccluded boxes of switch-free person tracks."""
    ground_truth = load_ground_truth(root)
    segments_per_track = defaultdict(int)
    for row in ground_truth:
        segments_per_track[row["video"], row["track_id"]] += 1
    samples = []
    for video in load_meta(root)["videos"]:
        frames = decode(root / video["file"])
        mot = parse_mot(root / video["tracklets"], (frames[0].shape[1], frames[0].shape[0]), len(frames))
        for row in ground_truth:
            if (
                row["video"] != video["video"]
                or row["identity"] < 0
                or segments_per_track[video["video"], row["track_id"]] > 1
            ):
                continue
            for frame, _, x, y, w, h in mot[mot[:, 1] == row["track_id"]][::3]:
                others = mot[(mot[:, 0] == frame) & (mot[:, 1] != row["track_id"])]
                overlap_w = np.clip(
                    np.minimum(x + w, others[:, 2] + others[:, 4]) - np.maximum(x, others[:, 2]), 0, None
                )
                overlap_h = np.clip(
                    np.minimum(y + h, others[:, 3] + others[:, 5]) - np.maximum(y, others[:, 3]), 0, None
                )
                band = frames[frame - 1][
                    y + int(0.2 * h) : y + int(0.45 * h), x + int(0.25 * w) : x + int(0.75 * w)
                ]
                if (overlap_w * overlap_h).max(initial=0) <= 0.1 * w * h and band.size:
                    samples.append((int(row["identity"]), video["camera"], band.reshape(-1, 3).mean(axis=0)))
    return samples


def test_identity_looks_alike_across_cameras(tiny_mjpeg):
    samples = torso_colours(tiny_mjpeg)
    same, different = [], []
    for i, (identity_a, camera_a, colour_a) in enumerate(samples):
        for identity_b, camera_b, colour_b in samples[i + 1 :]:
            if camera_a != camera_b:
                (same if identity_a == identity_b else different).append(
                    float(np.linalg.norm(colour_a - colour_b))
                )
    same, different = np.array(same), np.array(different)
    assert len(same) >= 50 and len(different) >= 500
    # AUC = P(same-identity distance < different-identity distance); 0.5 for an identity-blind feature, whose
    # standard deviation here is ≈ sqrt((n1 + n2) / (12·n1·n2)) < 0.025, so 0.75 is > 10σ above chance.
    auc = (same[:, None] < different[None, :]).mean()
    assert auc > 0.75 and same.mean() < 0.7 * different.mean()


def test_sprite_box_spans_the_body_height():
    rng = np.random.default_rng(2)
    for _ in range(20):
        look = random_appearance(rng)
        for phase in range(GAIT_PHASES):
            rgb, alpha = render_person(look, 100, phase, bool(phase % 2))
            x0, y0, x1, y1 = tight_box(alpha)
            assert 97 <= y1 <= 100 and y0 <= 3 and 15 <= x1 - x0 <= 62
            assert np.all(rgb <= 255.0 * alpha[..., None] + 1e-3)
    cache = SpriteCache({0: random_appearance(rng)}, canonical_height=160)
    sprite = cache.get(0, 90, 2, False)
    assert sprite.alpha.shape[0] == 90 and 86 <= sprite.box[3] - sprite.box[1] <= 90


def test_scales_are_consistent_and_bad_settings_are_named():
    for scale in SCALES.values():
        scale.validate()
    tiny, demo, large = SCALES["tiny"], SCALES["demo"], SCALES["large"]
    assert tiny.num_videos * tiny.frames_per_video <= 300 and demo.num_pretrain_identities >= 100
    assert large.num_pretrain_identities >= 3000 and large.video_hours >= 2.0 and large.num_cameras <= 6
    for scale in SCALES.values():
        assert scale.appearance_slots >= 2 * scale.num_pretrain_identities
        low, high = (scale.frame_height * fraction for fraction in scale.person_height)
        assert low >= 0.35 * scale.frame_height and high <= 0.75 * scale.frame_height
    with pytest.raises(ValueError, match="frame size must be even"):
        tiny.with_overrides(frame_width=321).validate()
    with pytest.raises(ValueError, match="switch_prob"):
        tiny.with_overrides(noise={"switch_prob": 1.5}).validate()
    with pytest.raises(ValueError, match="fewer than 2 per pre-training identity"):
        tiny.with_overrides(num_pretrain_identities=40, people_per_video=5).validate()
    assert isinstance(tiny, SynthScale)


def test_bad_arguments_and_non_empty_output(tmp_path):
    with pytest.raises(ValueError, match="unknown synth scale"):
        build_corpus(tmp_path / "a", "huge")
    with pytest.raises(ValueError, match="codec must be one of"):
        build_corpus(tmp_path / "b", "tiny", codec="av1")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        build_corpus(tmp_path / "c", "tiny")
    small = SCALES["tiny"].with_overrides(
        videos_per_camera=1, frames_per_video=4, people_per_video=8, market_images_per_camera=1
    )
    build_corpus(tmp_path / "c", small, codec="mjpeg", overwrite=True)
    assert (tmp_path / "c" / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "c" / "corpus.json").exists()


def test_fast_renderer_is_bit_identical_to_full_frame_rendering():
    """VideoRenderer redoes optics only where sprites were drawn; render_frame composites onto a fresh
    background and runs apply_optics over the whole frame. Same noise stream → the same uint8 frames, for
    blurred and unblurred cameras, with people entering and leaving through the frame edges."""
    rng = np.random.default_rng(0)
    looks = {identity: random_appearance(rng) for identity in range(10)}
    sizes = {identity: look.height_factor for identity, look in looks.items()}
    compared = 0
    for index in range(3):
        camera = make_camera(np.random.default_rng(index), index, 96, 64, (0.42, 0.7))
        if index == 0:
            camera = dataclasses.replace(camera, blur=0.0)
        cache = SpriteCache(looks, 80, capacity=8, canonical_capacity=4)  # evictions happen along the way
        walkers = plan_walkers(np.random.default_rng(9 + index), camera, list(looks), sizes, 40, 25)
        fast_noise, slow_noise = (
            SensorNoise(camera.background.shape, camera.noise_sigma, np.random.default_rng(index))
            for _ in range(2)
        )
        renderer = VideoRenderer(camera, cache, fast_noise, light=1.05)
        for t in range(40):
            expected = render_frame(camera, walkers, t, cache, slow_noise, light=1.05)
            np.testing.assert_array_equal(renderer.render(walkers, t), expected)
            compared += sum(walker.may_show(camera, t) for walker in walkers)
    assert compared >= 200  # people were on screen in most frames, so the fast path really ran


def test_sprite_cache_is_bounded_and_returns_the_same_pixels_after_eviction():
    rng = np.random.default_rng(4)
    looks = {identity: random_appearance(rng) for identity in range(3)}
    cache = SpriteCache(looks, 64, capacity=4, canonical_capacity=2)
    first = cache.get(1, 48, 3, True)
    first_rgb, first_alpha = first.rgb.copy(), first.alpha.copy()
    for identity in range(3):
        for phase in range(GAIT_PHASES):
            cache.get(identity, 40, phase, phase % 2 == 0)
    assert len(cache._sprites) <= 4 and len(cache._canonical) <= 2
    misses = cache.misses
    again = cache.get(1, 48, 3, True)
    assert cache.misses == misses + 1  # it was evicted, so it was drawn again …
    np.testing.assert_array_equal(again.rgb, first_rgb)  # … into exactly the same pixels
    np.testing.assert_array_equal(again.alpha, first_alpha)
    cache.get(1, 48, 3, True)
    assert cache.misses == misses + 1
    left = cache.get(1, 48, 3, False)
    np.testing.assert_array_equal(left.alpha, first_alpha[:, ::-1])
    np.testing.assert_array_equal(left.rgb, first_rgb[:, ::-1])
    assert left.box == tight_box(np.ascontiguousarray(left.alpha))
    assert left.ink == tight_box(np.ascontiguousarray(left.alpha), SMALLEST_ALPHA)
    x0, y0, x1, y1 = first.ink
    outside = first_alpha.copy()
    outside[y0:y1, x0:x1] = 0.0
    assert not outside.any() and first_alpha[y0:y1, x0:x1].any(axis=0).all()
    with pytest.raises(ValueError, match="capacities"):
        SpriteCache(looks, 64, capacity=1)


def test_walker_heights_are_quantised():
    rng = np.random.default_rng(1)
    looks = {identity: random_appearance(rng) for identity in range(6)}
    camera = make_camera(np.random.default_rng(2), 0, 160, 96, (0.42, 0.7))
    sizes = {identity: look.height_factor for identity, look in looks.items()}
    heights = {
        walker.state(camera, t)[2]
        for walker in plan_walkers(rng, camera, list(looks), sizes, 50, 25)
        for t in range(50)
    }
    assert len(heights) >= 3 and all(height % HEIGHT_STEP == 0 and height >= 8 for height in heights)
