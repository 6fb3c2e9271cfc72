"""Cameras (background, light, colour cast, viewpoint scale, blur, sensor noise), walkers and frame rendering.

Geometry: every camera has a ground band between ``far_y`` (just below its horizon) and the bottom of the
frame; a person whose feet are at ``y`` is drawn ``height_at(y)`` pixels tall (perspective: smaller far
away). People walk roughly horizontally across the frame; nearer people (larger foot y) occlude farther ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .people import GAIT_PHASES, Sprite, SpriteCache

STRIDE_HEIGHTS = 0.8  # one full gait cycle covers this many body heights of ground
HEIGHT_STEP = 4  # drawn person heights are multiples of this (few distinct sprites per walker)
VISIBLE_AREA = 0.5  # a box counts as visible when at least this share of its area lies inside the frame


@dataclass(frozen=True)
class Camera:
    """One camera's look. ``background`` is float32 (H, W, 3) in [0, 255] before gain; ``clutter`` are
    person-sized (x, y, w, h) boxes on background structures where a detector may fire falsely."""

    index: int
    background: np.ndarray
    gain: tuple[float, float, float]
    brightness: float
    blur: float
    noise_sigma: float
    scale: float
    far_y: float
    clutter: tuple[tuple[int, int, int, int], ...]
    person_height: tuple[float, float]

    def height_at(self, foot_y: float) -> float:
        """Body height in pixels of an average person whose feet are at ``foot_y``."""
        frame_height = self.background.shape[0]
        depth = np.clip((foot_y - self.far_y) / max(frame_height - self.far_y, 1.0), 0.0, 1.0)
        low, high = self.person_height
        return float((low + (high - low) * depth) * frame_height * self.scale)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(height, width) float32 low-frequency noise in [0, 1]: a coarse random grid, bilinearly upsampled."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    ys, xs = np.linspace(0, cells, height, dtype=np.float32), np.linspace(0, cells, width, dtype=np.float32)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _paint_structures(
    rng: np.random.Generator, image: np.ndarray, horizon: int
) -> list[tuple[int, int, int, int]]:
    """Buildings with windows behind the horizon, poles/bins/signs on the ground; returns clutter boxes."""
    height, width, _ = image.shape
    x = 0
    while x < width:
        building_width = int(rng.uniform(0.12, 0.3) * width)
        top = int(rng.uniform(0.05, 0.6) * horizon)
        color = rng.uniform(60, 200, 3)
        image[top:horizon, x : x + building_width] = color
        window = color * rng.uniform(0.4, 0.7)
        step = max(4, building_width // 6)
        for wy in range(top + 3, horizon - 4, step):
            for wx in range(x + 2, x + building_width - 3, step):
                image[wy : wy + step // 2, wx : wx + step // 2] = window
        x += building_width + int(rng.uniform(0.0, 0.08) * width)
    clutter = []
    for _ in range(int(rng.integers(3, 6))):
        base_y = int(rng.uniform(horizon + 0.1 * (height - horizon), height - 2))
        object_height = max(6, int((0.25 + 0.45 * (base_y - horizon) / (height - horizon)) * height))
        object_width = max(3, int(object_height * rng.uniform(0.25, 0.45)))
        left = int(rng.uniform(0, width - object_width))
        top = max(0, base_y - object_height)
        image[top:base_y, left : left + object_width] = rng.uniform(30, 220, 3)
        pole = max(1, object_width // 5)
        image[top : top + object_height // 3, left + pole : left + object_width - pole] = rng.uniform(
            30, 220, 3
        )
        clutter.append((left, top, object_width, base_y - top))
    return clutter


def make_camera(
    rng: np.random.Generator, index: int, width: int, height: int, person_height: tuple
) -> Camera:
    """A camera with its own procedural background (gradient + texture + structures) and optics."""
    horizon = int(rng.uniform(0.22, 0.4) * height)
    sky_top, sky_bottom = rng.uniform(120, 240, 3), rng.uniform(150, 250, 3)
    ground_color = rng.uniform(60, 170, 3)
    image = np.empty((height, width, 3), np.float32)
    mix = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None, None]
    image[:horizon] = sky_top * (1 - mix) + sky_bottom * mix
    texture = _smooth_noise(rng, height - horizon, width, 8)[..., None] - 0.5
    image[horizon:] = ground_color * (1.0 + 0.35 * texture)
    clutter = _paint_structures(rng, image, horizon)
    fine = rng.normal(0.0, 5.0, (height, width, 1)).astype(np.float32)
    background = np.clip(image + fine, 0, 255)
    return Camera(
        index=index,
        background=background,
        gain=tuple(float(g) for g in rng.uniform(0.8, 1.2, 3)),
        brightness=float(rng.uniform(0.75, 1.15)),
        blur=float(rng.uniform(0.0, 1.0)),
        noise_sigma=float(rng.uniform(1.5, 6.0)),
        scale=float(rng.uniform(0.88, 1.1)),
        far_y=float(horizon + 0.45 * (height - horizon)),
        clutter=tuple(clutter),
        person_height=tuple(person_height),
    )


@dataclass(frozen=True)
class Walker:
    """One identity crossing one video: feet at (x0 + vx·(t − t0), y0 + vy·(t − t0)) at frame t."""

    identity: int
    t0: int
    x0: float
    y0: float
    vx: float
    vy: float
    size: float
    phase0: float

    def state(self, camera: Camera, t: int) -> tuple[float, float, int, int, bool]:
        """(foot x, foot y, height px, gait phase, facing right) at frame ``t``."""
        foot_x = self.x0 + self.vx * (t - self.t0)
        foot_y = self.y0 + self.vy * (t - self.t0)
        height_px = max(HEIGHT_STEP * round(camera.height_at(foot_y) * self.size / HEIGHT_STEP), 8)
        cycle = STRIDE_HEIGHTS * height_px
        phase = int(np.floor((self.phase0 + abs(foot_x - self.x0) / cycle) * GAIT_PHASES)) % GAIT_PHASES
        return foot_x, foot_y, height_px, phase, self.vx >= 0

    def frame_range(self, camera: Camera, frames: int) -> range:
        """Frames in 0..frames-1 during which any part of the walker may be inside the frame."""
        height, width, _ = camera.background.shape
        margin = float(height)
        enter = self.t0 + ((-margin if self.vx > 0 else width + margin) - self.x0) / self.vx
        leave = self.t0 + ((width + margin if self.vx > 0 else -margin) - self.x0) / self.vx
        return range(max(int(np.floor(enter)), 0), min(int(np.ceil(leave)) + 1, frames))

    def may_show(self, camera: Camera, t: int) -> bool:
        return t in self.frame_range(camera, t + 1)


def plan_walkers(
    rng: np.random.Generator,
    camera: Camera,
    identities: list[int],
    sizes: dict[int, float],
    frames: int,
    fps: int,
) -> list[Walker]:
    """Walkers for ``identities``: random side, depth, speed and entry time so that each is on screen."""
    height, width, _ = camera.background.shape
    walkers = []
    for identity in identities:
        foot_y = rng.uniform(camera.far_y + 2.0, height - 1.0)
        height_px = camera.height_at(foot_y) * sizes[identity]
        speed = rng.uniform(0.9, 1.6) / 1.7 * height_px / fps  # 0.9–1.6 m/s for a 1.7 m person
        speed = max(speed, 1.2 * width / max(frames, 1) / 4)  # a short video still sees people move
        right = bool(rng.random() < 0.5)
        margin = 0.3 * height_px
        crossing_frames = (width + 2 * margin) / speed
        t_enter = rng.uniform(-0.6 * crossing_frames, frames - 0.4 * crossing_frames)
        start_x = -margin if right else width + margin
        vy = rng.normal(0.0, 0.02) * speed
        walkers.append(
            Walker(
                identity,
                round(t_enter),
                start_x,
                foot_y,
                speed if right else -speed,
                vy,
                sizes[identity],
                rng.random(),
            )
        )
    return walkers


def true_boxes(
    walkers: list[Walker], camera: Camera, cache: SpriteCache, frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth boxes of every walker in every frame.

    Returns (boxes float64 (P, T, 4) as x0, y0, x1, y1 in frame pixels, unclipped; visible bool (P, T): at
    least VISIBLE_AREA of the box lies inside the frame).
    """
    height, width, _ = camera.background.shape
    boxes = np.full((len(walkers), frames, 4), -1e4)
    boxes[..., 2:] += 1.0
    for p, walker in enumerate(walkers):
        for t in walker.frame_range(camera, frames):
            foot_x, foot_y, height_px, phase, right = walker.state(camera, t)
            sprite = cache.get(walker.identity, height_px, phase, right)
            left, top = _sprite_origin(foot_x, foot_y, sprite.alpha.shape)
            x0, y0, x1, y1 = sprite.box
            boxes[p, t] = (left + x0, top + y0, left + x1, top + y1)
    inside_w = np.clip(np.minimum(boxes[..., 2], width) - np.maximum(boxes[..., 0], 0), 0, None)
    inside_h = np.clip(np.minimum(boxes[..., 3], height) - np.maximum(boxes[..., 1], 0), 0, None)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes, inside_w * inside_h >= VISIBLE_AREA * area


def _sprite_origin(foot_x: float, foot_y: float, sprite_shape: tuple[int, ...]) -> tuple[int, int]:
    sprite_height, sprite_width = sprite_shape[:2]
    return round(foot_x - sprite_width / 2), round(foot_y) - sprite_height


Rect = tuple[int, int, int, int]
"""(y0, y1, x0, x1), end-exclusive, in frame pixels."""


def composite(canvas: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, left: int, top: int) -> Rect | None:
    """Alpha-blend a premultiplied sprite (rgb (h, w, 3), alpha (h, w)) onto ``canvas`` (H, W, 3) float32 at
    (left, top), clipped; returns the changed rect, or None when the sprite lies outside the canvas."""
    height, width, _ = canvas.shape
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + alpha.shape[1], width), min(top + alpha.shape[0], height)
    if x0 >= x1 or y0 >= y1:
        return None
    sprite_rgb = rgb[y0 - top : y1 - top, x0 - left : x1 - left]
    sprite_alpha = alpha[y0 - top : y1 - top, x0 - left : x1 - left, None]
    region = canvas[y0:y1, x0:x1]
    region *= 1.0 - sprite_alpha
    region += sprite_rgb
    return (y0, y1, x0, x1)


def composite_sprite(canvas: np.ndarray, sprite: Sprite, left: int, top: int) -> Rect | None:
    """``composite`` of the inked part of ``sprite`` whose full extent starts at (left, top)."""
    x0, y0, x1, y1 = sprite.ink
    return composite(canvas, sprite.rgb[y0:y1, x0:x1], sprite.alpha[y0:y1, x0:x1], left + x0, top + y0)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable 3-tap Gaussian-like blur of (H, W, 3) in place (edges replicated); the centre weight falls
    as ``sigma`` grows; returns ``image``."""
    if sigma <= 0.05:
        return image
    side = float(np.exp(-1.0 / (2.0 * sigma * sigma)))
    centre, side = 1.0 / (1.0 + 2.0 * side), side / (1.0 + 2.0 * side)
    for axis in (0, 1):
        source = image.copy()
        image *= centre
        ahead = [slice(None)] * 2
        behind = [slice(None)] * 2
        ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
        image[tuple(ahead)] += side * source[tuple(behind)]
        image[tuple(behind)] += side * source[tuple(ahead)]
        first, last = [slice(None)] * 2, [slice(None)] * 2
        first[axis], last[axis] = slice(0, 1), slice(-1, None)
        image[tuple(first)] += side * source[tuple(first)]
        image[tuple(last)] += side * source[tuple(last)]
    return image


class SensorNoise:
    """Gaussian sensor noise for one video: a bank of noise fields a little larger than the frame, from
    which each frame takes a window at a random offset (cheap, and no two consecutive frames alike)."""

    PAD = 24

    def __init__(self, shape: tuple[int, int, int], sigma: float, rng: np.random.Generator, fields: int = 2):
        height, width, channels = shape
        self.shape, self.rng = shape, rng
        bank_shape = (fields, height + self.PAD, width + self.PAD, channels)
        self.bank = rng.standard_normal(bank_shape, dtype=np.float32) * np.float32(sigma)

    def sample(self) -> np.ndarray:
        height, width, _ = self.shape
        index, dy, dx = (
            self.rng.integers(len(self.bank)),
            self.rng.integers(self.PAD),
            self.rng.integers(self.PAD),
        )
        return self.bank[index, dy : dy + height, dx : dx + width]


def apply_optics(camera: Camera, image: np.ndarray, noise: SensorNoise, light: float = 1.0) -> np.ndarray:
    """Colour cast, illumination (× ``light``), blur and sensor noise of ``camera`` applied to the float32
    (H, W, 3) ``image`` (overwritten); returns uint8 (H, W, 3)."""
    image *= np.asarray(camera.gain, np.float32) * np.float32(camera.brightness * light)
    image = _blur(image, camera.blur)
    image += noise.sample()
    image += 0.5
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


def render_frame(
    camera: Camera, walkers: list[Walker], t: int, cache: SpriteCache, noise: SensorNoise, light: float = 1.0
) -> np.ndarray:
    """Frame ``t`` as uint8 (H, W, 3): background, walkers far to near, then the camera's optics."""
    canvas = camera.background.copy()
    states = [(walker, *walker.state(camera, t)) for walker in walkers if walker.may_show(camera, t)]
    for walker, foot_x, foot_y, height_px, phase, right in sorted(states, key=lambda state: state[2]):
        sprite = cache.get(walker.identity, height_px, phase, right)
        composite(canvas, sprite.rgb, sprite.alpha, *_sprite_origin(foot_x, foot_y, sprite.alpha.shape))
    return apply_optics(camera, canvas, noise, light)
