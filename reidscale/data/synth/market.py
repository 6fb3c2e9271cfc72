"""The evaluation folder in Market-1501 layout, rendered from identities that never appear in the videos.

Naming ``PPPP_cCsS_FFFFFF_BB.jpg``: pid = corpus identity + 1 (so pids never collide with the distractor
pid 0), camera = corpus camera index + 1 (the first ``MAX_MARKET_CAMERAS`` cameras), sequence 1, F = a
running image counter per camera, BB = 01.

Split rule: every test identity is photographed by 2..M cameras, ``market_images_per_camera`` images each.
Its first camera (two first cameras when it has three or more) gives one query image; every other image goes
to the gallery, so each query has a correct match in another camera. ``market_distractors`` people drawn
outside every identity set go to the gallery with pid 0 and ``market_junk`` background crops with pid -1.
Train identities (a separate set) go to ``bounding_box_train`` with all their images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .config import MAX_MARKET_CAMERAS, SynthScale
from .people import GAIT_PHASES, Appearance, SpriteCache
from .scene import Camera, SensorNoise, apply_optics, composite

JPEG_QUALITY = 92
DISTRACTOR_PID, JUNK_PID = 0, -1


@dataclass
class MarketCounts:
    """Images written per split and the identity sets used."""

    train: int = 0
    query: int = 0
    gallery: int = 0
    distractors: int = 0
    junk: int = 0
    train_pids: list[int] = field(default_factory=list)
    test_pids: list[int] = field(default_factory=list)


def render_market_crop(
    camera: Camera, cache: SpriteCache, identity: int, crop_size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """One person photo: the identity placed on ``camera``'s ground, optics applied, cropped to its box with
    a little jitter and resized (bicubic) to ``crop_size`` = (height, width); returns uint8 (h, w, 3)."""
    height, width, _ = camera.background.shape
    foot_y = rng.uniform(camera.far_y + 2.0, height - 1.0)
    foot_x = rng.uniform(0.2, 0.8) * width
    size = cache.looks[identity].height_factor
    height_px = max(8, 2 * round(camera.height_at(foot_y) * size / 2))
    sprite = cache.get(identity, height_px, int(rng.integers(GAIT_PHASES)), bool(rng.random() < 0.5))
    left = round(foot_x - sprite.alpha.shape[1] / 2)
    top = round(foot_y) - sprite.alpha.shape[0]
    canvas = camera.background.copy()
    composite(canvas, sprite.rgb, sprite.alpha, left, top)
    x0, y0, x1, y1 = sprite.box
    box = np.array([left + x0, top + y0, left + x1, top + y1], float)
    box += rng.normal(0.0, 0.04, 4) * (box[3] - box[1])
    return _photograph(camera, canvas, box, crop_size, rng)


def render_junk_crop(camera: Camera, crop_size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A person-shaped crop of background only (what a detector's junk box holds)."""
    height, width, _ = camera.background.shape
    box_height = rng.uniform(0.3, 0.6) * height
    x0, y0 = rng.uniform(0, width - box_height / 2), rng.uniform(0, height - box_height)
    box = np.array([x0, y0, x0 + box_height / 2, y0 + box_height])
    return _photograph(camera, camera.background.copy(), box, crop_size, rng)


def _photograph(
    camera: Camera, canvas: np.ndarray, box: np.ndarray, crop_size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Crop ``box`` (x0, y0, x1, y1, clipped into the frame) of the float canvas, apply the camera's optics
    and resize (bicubic) to ``crop_size`` = (height, width); returns uint8 (h, w, 3)."""
    height, width, _ = canvas.shape
    x0, y0 = int(np.clip(np.floor(box[0]), 0, width - 1)), int(np.clip(np.floor(box[1]), 0, height - 1))
    x1, y1 = int(np.clip(np.ceil(box[2]), x0 + 1, width)), int(np.clip(np.ceil(box[3]), y0 + 1, height))
    region = np.ascontiguousarray(canvas[y0:y1, x0:x1])
    noise = SensorNoise(region.shape, camera.noise_sigma, rng, fields=1)
    pixels = apply_optics(camera, region, noise, light=float(rng.uniform(0.9, 1.1)))
    crop = Image.fromarray(pixels).resize((crop_size[1], crop_size[0]), Image.Resampling.BICUBIC)
    return np.asarray(crop)


class _MarketWriter:
    def __init__(self, root: Path):
        self.root = root
        self.counters: dict[int, int] = {}
        for split in ("bounding_box_train", "query", "bounding_box_test"):
            (root / split).mkdir(parents=True, exist_ok=True)

    def save(self, split: str, pid: int, camera: int, pixels: np.ndarray) -> None:
        self.counters[camera] = self.counters.get(camera, 0) + 1
        pid_text = f"{pid:04d}" if pid >= 0 else str(pid)
        name = f"{pid_text}_c{camera + 1}s1_{self.counters[camera]:06d}_01.jpg"
        Image.fromarray(pixels).save(self.root / split / name, quality=JPEG_QUALITY)


def write_market(
    root: Path,
    scale: SynthScale,
    cameras: list[Camera],
    looks: dict[int, Appearance],
    train_ids: list[int],
    test_ids: list[int],
    distractor_looks: list[Appearance],
    rng: np.random.Generator,
) -> MarketCounts:
    """Render the market folder into ``root`` (a fresh folder); see the module docstring for the rule."""
    market_cameras = cameras[:MAX_MARKET_CAMERAS]
    distractor_keys = [-(index + 2) for index in range(len(distractor_looks))]
    all_looks = {**looks, **dict(zip(distractor_keys, distractor_looks, strict=True))}
    cache = SpriteCache(all_looks, scale.sprite_height)
    writer, counts = _MarketWriter(root), MarketCounts()
    crop_size = scale.market_crop_size
    for is_test, identities in ((False, train_ids), (True, test_ids)):
        for identity in identities:
            count = int(rng.integers(2, len(market_cameras) + 1))
            chosen = [int(c) for c in rng.permutation(len(market_cameras))[:count]]
            query_cameras = set(chosen[: 1 if count == 2 else 2]) if is_test else set()
            for camera_index in chosen:
                for shot in range(scale.market_images_per_camera):
                    crop = render_market_crop(market_cameras[camera_index], cache, identity, crop_size, rng)
                    if not is_test:
                        split = "bounding_box_train"
                    else:
                        split = (
                            "query" if camera_index in query_cameras and shot == 0 else "bounding_box_test"
                        )
                    writer.save(split, identity + 1, camera_index, crop)
                    counts.train += split == "bounding_box_train"
                    counts.query += split == "query"
                    counts.gallery += split == "bounding_box_test"
            cache.forget(identity)
            (counts.test_pids if is_test else counts.train_pids).append(identity + 1)
    for key in distractor_keys:
        camera_index = int(rng.integers(len(market_cameras)))
        writer.save(
            "bounding_box_test",
            DISTRACTOR_PID,
            camera_index,
            render_market_crop(market_cameras[camera_index], cache, key, crop_size, rng),
        )
        counts.distractors += 1
    for _ in range(scale.market_junk):
        camera_index = int(rng.integers(len(market_cameras)))
        writer.save(
            "bounding_box_test",
            JUNK_PID,
            camera_index,
            render_junk_crop(market_cameras[camera_index], crop_size, rng),
        )
        counts.junk += 1
    counts.gallery += counts.distractors + counts.junk
    return counts
