"""Synthetic multi-camera person-video corpus with ground truth: ``build_corpus(out_dir, scale, seed, …)``.

Layout written into ``out_dir``::

    videos/<video>.<mp4|webm|avi>   cam<CC>_v<VVV>, camera index from 0; h264 / vp9 / mjpeg via PyAV
    tracklets/<video>.txt           MOT lines frame,track_id,x,y,w,h,conf,-1,-1,-1 (1-based frames)
    ground_truth.csv                video,track_id,identity,first_frame,last_frame (one row per segment of
                                    constant identity; identity -1 = non-person tracklet)
    market/{bounding_box_train,query,bounding_box_test}/   Market-1501 naming, identities not in the videos
    corpus.json                     parameters, seed, codec, cameras, per-video order and noise counts

Identities: 0..P-1 walk through the videos, the next ones are the market train and test identities (market
pid = identity + 1). Every random draw comes from a generator seeded by (seed, stream, index), so a seed
fixes every annotation byte and every decoded pixel (encoded bytes may depend on the codec library build).
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...utils.io import atomic_write_json, atomic_write_text
from .config import CODECS, SCALES, NoiseConfig, SynthScale, resolve_scale
from .market import MarketCounts, write_market
from .noise import apply_tracker_noise
from .people import Appearance, SpriteCache, random_appearance
from .render import VideoRenderer
from .scene import Camera, SensorNoise, make_camera, plan_walkers, true_boxes
from .schedule import assign_identities
from .writer import (
    encode_video,
    mot_text,
    prepare_output,
    replace_folder,
    video_file_name,
    write_ground_truth,
)

__all__ = [
    "CODECS",
    "SCALES",
    "CorpusSummary",
    "NoiseConfig",
    "SynthScale",
    "assign_identities",
    "build_corpus",
    "video_name",
]

FORMAT_VERSION = 1
STREAM_IDENTITIES, STREAM_CAMERAS, STREAM_SCHEDULE, STREAM_VIDEO, STREAM_PIXELS, STREAM_MARKET = range(1, 7)
SynthProgressCallback = Callable[[str, int, int], None]  # (stage, items done in the stage, stage total)


@dataclass
class CorpusSummary:
    """What ``build_corpus`` wrote; ``noise`` sums the per-video counts (crossings, switches, fragments…)."""

    out_dir: str
    scale: str
    seed: int
    codec: str
    num_videos: int
    num_frames: int
    num_boxes: int
    num_tracklets: int
    num_identities: int
    num_market_images: int
    noise: dict[str, int]
    seconds: float


def video_name(camera: int, index: int) -> str:
    """Video id ``cam<CC>_v<VVV>`` (camera and video index from 0)."""
    return f"cam{camera:02d}_v{index:03d}"


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def _build_video(
    out: Path,
    scale: SynthScale,
    codec: str,
    seed: int,
    order: int,
    camera: Camera,
    people: list[int],
    cache: SpriteCache,
) -> tuple[list[tuple[str, int, int, int, int]], dict]:
    """Render, encode and annotate the video at ``order``; returns (ground-truth rows, corpus.json entry)."""
    name = video_name(order % scale.num_cameras, order // scale.num_cameras)
    rng = _rng(seed, STREAM_VIDEO, order)
    sizes = {identity: cache.looks[identity].height_factor for identity in people}
    walkers = plan_walkers(rng, camera, people, sizes, scale.frames_per_video, scale.fps)
    boxes, visible = true_boxes(walkers, camera, cache, scale.frames_per_video)
    size = (scale.frame_width, scale.frame_height)
    output = apply_tracker_noise(boxes, visible, people, camera.clutter, size, scale.noise, rng)
    light = float(rng.uniform(0.9, 1.1))
    noise = SensorNoise(camera.background.shape, camera.noise_sigma, _rng(seed, STREAM_PIXELS, order))
    renderer = VideoRenderer(camera, cache, noise, light)
    frames = (renderer.render(walkers, t) for t in range(scale.frames_per_video))
    file_name = video_file_name(name, codec)
    encode_video(out / "videos" / file_name, frames, codec, scale.fps, scale.gop, size)
    atomic_write_text(out / "tracklets" / f"{name}.txt", mot_text(output.mot))
    rows = [(name, track, identity, first, last) for track, identity, first, last in output.ground_truth]
    meta = {
        "video": name,
        "file": f"videos/{file_name}",
        "tracklets": f"tracklets/{name}.txt",
        "camera": order % scale.num_cameras,
        "order": order,
        "num_frames": scale.frames_per_video,
        "identities": people,
        "light": round(light, 4),
        **output.counts,
    }
    return rows, meta


@dataclass
class _VideoJob:
    """What every video needs besides its own index and people (sent once to each worker process)."""

    out: Path
    config: SynthScale
    codec: str
    seed: int
    looks: dict[int, Appearance]
    cameras: list[Camera]


_WORKER_STATE: dict[str, object] = {}


def _start_worker(job: _VideoJob) -> None:
    _WORKER_STATE["job"] = job
    _WORKER_STATE["cache"] = SpriteCache(job.looks, job.config.sprite_height)


def _video_in_worker(order: int, people: list[int]) -> tuple[list, dict]:
    job, cache = _WORKER_STATE["job"], _WORKER_STATE["cache"]
    camera = job.cameras[order % job.config.num_cameras]
    return _build_video(job.out, job.config, job.codec, job.seed, order, camera, people, cache)


def _build_videos(
    job: _VideoJob, schedule: list[list[int]], workers: int, progress: SynthProgressCallback | None
) -> tuple[list[tuple[str, int, int, int, int]], list[dict]]:
    """Build every video, in order or in ``workers`` processes; returns (ground-truth rows, video entries)."""
    gt_rows, videos = [], []
    if workers == 1:
        cache = SpriteCache(job.looks, job.config.sprite_height)
        for order, people in enumerate(schedule):
            camera = job.cameras[order % job.config.num_cameras]
            rows, meta = _build_video(job.out, job.config, job.codec, job.seed, order, camera, people, cache)
            gt_rows += rows
            videos.append(meta)
            if progress is not None:
                progress("videos", order + 1, len(schedule))
        return gt_rows, videos
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(job,)) as pool:
        # consecutive videos share people (see assign_identities): hand them to the same worker's caches
        chunk = max(1, min(job.config.num_cameras, len(schedule) // workers))
        results = pool.map(_video_in_worker, range(len(schedule)), schedule, chunksize=chunk)
        for done, (rows, meta) in enumerate(results, start=1):
            gt_rows += rows
            videos.append(meta)
            if progress is not None:
                progress("videos", done, len(schedule))
    return gt_rows, videos


def _camera_meta(camera: Camera) -> dict:
    return {
        "camera": camera.index,
        "gain": [round(g, 4) for g in camera.gain],
        "brightness": round(camera.brightness, 4),
        "blur": round(camera.blur, 4),
        "noise_sigma": round(camera.noise_sigma, 4),
        "scale": round(camera.scale, 4),
        "far_y": round(camera.far_y, 2),
        "clutter": [list(box) for box in camera.clutter],
    }


def build_corpus(
    out_dir: str | Path,
    scale: str | SynthScale = "tiny",
    seed: int = 0,
    codec: str = "h264",
    progress: SynthProgressCallback | None = None,
    *,
    overwrite: bool = False,
    workers: int = 1,
) -> CorpusSummary:
    """Write a synthetic corpus into ``out_dir`` (see the module docstring) and return its summary.

    ``progress(stage, done, total)`` is called after each video ("videos") and once for "market".
    ``out_dir`` must be empty or absent; with ``overwrite`` only earlier corpus outputs there are removed.
    ``workers`` > 1 renders videos in that many processes; the output is the same for any ``workers``.
    """
    started = time.perf_counter()
    config = resolve_scale(scale)
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    out = Path(out_dir).expanduser().resolve()
    prepare_output(out, overwrite)
    identity_rng = _rng(seed, STREAM_IDENTITIES)
    looks: dict[int, Appearance] = {
        identity: random_appearance(identity_rng) for identity in range(config.num_identities)
    }
    camera_rng = _rng(seed, STREAM_CAMERAS)
    cameras = [
        make_camera(camera_rng, index, config.frame_width, config.frame_height, config.person_height)
        for index in range(config.num_cameras)
    ]
    schedule = assign_identities(config, _rng(seed, STREAM_SCHEDULE))
    job = _VideoJob(out, config, codec, seed, looks, cameras)
    gt_rows, videos = _build_videos(job, schedule, workers, progress)
    write_ground_truth(out / "ground_truth.csv", gt_rows)
    market = _build_market(out, config, cameras, looks, seed)
    if progress is not None:
        progress("market", 1, 1)
    noise_totals = {
        key: sum(meta[key] for meta in videos)
        for key in ("persons", "crossings", "switches", "fragments", "false_positives", "tracks", "boxes")
    }
    pretrain_ids = sorted({identity for people in schedule for identity in people})
    atomic_write_json(
        out / "corpus.json",
        {
            "format_version": FORMAT_VERSION,
            "scale": config.name,
            "parameters": asdict(config),
            "seed": seed,
            "codec": codec,
            "fps": config.fps,
            "frame_size": [config.frame_width, config.frame_height],
            "identities": {
                "pretrain": [0, config.num_pretrain_identities],
                "pretrain_in_videos": len(pretrain_ids),
                "market_train_pids": market.train_pids,
                "market_test_pids": market.test_pids,
            },
            "noise": asdict(config.noise),
            "noise_counts": noise_totals,
            "cameras": [_camera_meta(camera) for camera in cameras],
            "videos": videos,
            "market": {key: value for key, value in asdict(market).items() if not key.endswith("_pids")},
        },
    )
    return CorpusSummary(
        out_dir=str(out),
        scale=config.name,
        seed=seed,
        codec=codec,
        num_videos=len(videos),
        num_frames=len(videos) * config.frames_per_video,
        num_boxes=noise_totals["boxes"],
        num_tracklets=noise_totals["tracks"],
        num_identities=len(pretrain_ids),
        num_market_images=market.train + market.query + market.gallery,
        noise=noise_totals,
        seconds=time.perf_counter() - started,
    )


def _build_market(out: Path, config: SynthScale, cameras: list[Camera], looks, seed: int) -> MarketCounts:
    first_train = config.num_pretrain_identities
    first_test = first_train + config.num_market_train_identities
    train_ids = list(range(first_train, first_test))
    test_ids = list(range(first_test, config.num_identities))
    rng = _rng(seed, STREAM_MARKET)
    distractors = [random_appearance(rng) for _ in range(config.market_distractors)]
    staging = out / ".market.partial"
    shutil.rmtree(staging, ignore_errors=True)
    counts = write_market(staging, config, cameras, looks, train_ids, test_ids, distractors, rng)
    replace_folder(staging, out / "market")
    return counts
