"""Procedural people: a fixed appearance per identity, drawn walking in side view with numpy masks.

An ``Appearance`` holds what makes an identity recognisable across cameras: body proportions, skin and hair,
clothing colours and patterns of top and bottom, shoes and accessories (hat, backpack, shoulder bag).
``render_person`` draws it at a pixel height in one of ``GAIT_PHASES`` walking poses, facing right or left,
into an RGB sprite with an alpha mask (drawn at 2× and averaged, so edges are soft).
"""

from __future__ import annotations

import colorsys
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from PIL import Image

GAIT_PHASES = 6
TOP_PATTERNS = ("solid", "stripes", "checks", "two_tone")
BOTTOM_PATTERNS = ("solid", "stripes", "two_tone")
SKIN_TONES = np.array(
    [[241, 204, 177], [224, 172, 138], [198, 134, 94], [160, 102, 66], [112, 72, 46], [80, 52, 36]],
    np.float32,
)
SUPERSAMPLE = 2
SMALLEST_ALPHA = float(np.nextafter(np.float32(0), np.float32(1)))  # ink: any alpha > 0


@dataclass(frozen=True)
class Appearance:
    """How one identity looks. Colours are RGB floats in [0, 255]; sizes are fractions of the body height."""

    height_factor: float
    width_factor: float
    head_ratio: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    long_hair: bool
    top_colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    top_pattern: str
    long_sleeves: bool
    bottom_colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    bottom_pattern: str
    shorts: bool
    shoes: tuple[float, float, float]
    hat: tuple[float, float, float] | None
    backpack: tuple[float, float, float] | None
    bag: tuple[float, float, float] | None


def random_color(rng: np.random.Generator, neutral_prob: float = 0.3) -> tuple[float, float, float]:
    """A clothing colour: saturated hues, or with probability ``neutral_prob`` a grey/black/white."""
    if rng.random() < neutral_prob:
        level = float(rng.uniform(20, 235))
        return (level, level, level)
    red, green, blue = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.35, 0.95), rng.uniform(0.25, 0.95))
    return (red * 255.0, green * 255.0, blue * 255.0)


def random_appearance(rng: np.random.Generator) -> Appearance:
    """Draw an identity's appearance (all its randomness comes from ``rng``)."""
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.93, 1.07)
    hair_level = rng.uniform(0.1, 1.0)
    hair = (
        np.array([70, 50, 30]) * hair_level * 1.6 if rng.random() < 0.8 else np.array(random_color(rng, 1.0))
    )

    def maybe(prob: float) -> tuple[float, float, float] | None:
        return random_color(rng) if rng.random() < prob else None

    return Appearance(
        height_factor=float(rng.uniform(0.9, 1.1)),
        width_factor=float(rng.uniform(0.85, 1.2)),
        head_ratio=float(rng.uniform(0.11, 0.145)),
        skin=tuple(float(c) for c in np.clip(skin, 0, 255)),
        hair=tuple(float(c) for c in np.clip(hair, 0, 255)),
        long_hair=bool(rng.random() < 0.35),
        top_colors=(random_color(rng), random_color(rng)),
        top_pattern=TOP_PATTERNS[rng.integers(len(TOP_PATTERNS))],
        long_sleeves=bool(rng.random() < 0.6),
        bottom_colors=(random_color(rng, 0.5), random_color(rng)),
        bottom_pattern=BOTTOM_PATTERNS[rng.integers(len(BOTTOM_PATTERNS))],
        shorts=bool(rng.random() < 0.25),
        shoes=random_color(rng, 0.7),
        hat=maybe(0.25),
        backpack=maybe(0.3),
        bag=maybe(0.25),
    )


class _Canvas:
    """Supersampled drawing surface in body units: y from 0 (top) to 1 (feet), x centred on the body."""

    def __init__(self, height_px: int, width_px: int, supersample: int):
        self.supersample = supersample
        samples_y, samples_x = height_px * supersample, width_px * supersample
        scale = 1.0 / samples_y
        self.y = ((np.arange(samples_y, dtype=np.float32) + 0.5) * scale)[:, None]
        self.x = ((np.arange(samples_x, dtype=np.float32) + 0.5 - samples_x / 2) * scale)[None, :]
        self.rgb = np.zeros((samples_y, samples_x, 3), np.float32)
        self.alpha = np.zeros((samples_y, samples_x), np.float32)

    def paint(self, mask: np.ndarray, color: np.ndarray | tuple[float, ...]) -> None:
        """Cover ``mask`` with ``color``: an RGB triple or an (H, W, 3) array of per-sample colours."""
        mask = np.broadcast_to(mask, self.alpha.shape)
        np.copyto(self.rgb, np.asarray(color, np.float32), where=mask[..., None])
        np.copyto(self.alpha, np.float32(1.0), where=mask)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2 <= 1.0

    def rect(self, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        return (self.x >= x0) & (self.x <= x1) & (self.y >= y0) & (self.y <= y1)

    def capsule(self, start: tuple[float, float], end: tuple[float, float], radius: float) -> np.ndarray:
        """Points within ``radius`` of the segment start→end (a thick limb with round ends)."""
        (x0, y0), (x1, y1) = start, end
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((self.x - x0) * dx + (self.y - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        return (self.x - x0 - t * dx) ** 2 + (self.y - y0 - t * dy) ** 2 <= radius * radius

    def pattern(self, colors: tuple, kind: str, period: float, y_split: float) -> np.ndarray:
        """(H, W, 3) colours of a two-colour pattern: solid, stripes, checks, two_tone (split at y_split)."""
        first, second = np.asarray(colors[0], np.float32), np.asarray(colors[1], np.float32)
        if kind == "solid":
            use_second = np.zeros_like(self.alpha, dtype=bool)
        elif kind == "stripes":
            use_second = np.broadcast_to((self.y // period) % 2 == 1, self.alpha.shape)
        elif kind == "checks":
            use_second = ((self.y // period) + (self.x // period)) % 2 == 1
        elif kind == "two_tone":
            use_second = np.broadcast_to(self.y > y_split, self.alpha.shape)
        else:
            raise ValueError(f"unknown pattern {kind!r}")
        return np.where(use_second[..., None], second, first)

    def downsampled(self) -> tuple[np.ndarray, np.ndarray]:
        """(rgb (h, w, 3), alpha (h, w)) averaged over supersample² samples; rgb is premultiplied by alpha."""
        samples_y, samples_x = self.alpha.shape
        factor = self.supersample
        shape = (samples_y // factor, factor, samples_x // factor, factor)
        premultiplied = (self.rgb * self.alpha[..., None]).reshape(*shape, 3).mean(axis=(1, 3))
        return premultiplied, self.alpha.reshape(shape).mean(axis=(1, 3))


def sprite_width(height_px: int) -> int:
    """Width in pixels of the sprite drawn for a person ``height_px`` tall (room for swinging limbs)."""
    return max(2, round(height_px * 0.62))


def render_person(
    look: Appearance, height_px: int, phase: int, facing_right: bool, supersample: int = SUPERSAMPLE
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a walking person ``height_px`` tall at gait ``phase`` (0..GAIT_PHASES-1), ``supersample``² samples
    per pixel.

    Returns (rgb_premultiplied float32 (height_px, W, 3), alpha float32 (height_px, W)) with W =
    sprite_width(height_px); the feet touch the bottom row and the body is centred horizontally.
    """
    if height_px < 4:
        raise ValueError(f"person height must be ≥ 4 px, got {height_px}")
    canvas = _Canvas(height_px, sprite_width(height_px), supersample)
    swing = 0.38 * np.sin(2.0 * np.pi * (phase % GAIT_PHASES) / GAIT_PHASES)
    width, head = look.width_factor, look.head_ratio
    shoulder_y, hip_y, foot_y = head + 0.035, 0.52, 0.965
    limb_radius, arm_radius = 0.042 * width, 0.03 * width
    torso_half = 0.085 * width
    leg_length, arm_length = foot_y - hip_y, 0.31
    bottoms = canvas.pattern(look.bottom_colors, look.bottom_pattern, 0.05, 0.5 * (hip_y + foot_y))
    tops = canvas.pattern(look.top_colors, look.top_pattern, 0.045, 0.5 * (shoulder_y + hip_y))
    shade = 0.78

    def leg(angle: float, darken: float) -> None:
        foot = (np.sin(angle) * leg_length, hip_y + np.cos(angle) * leg_length)
        canvas.paint(canvas.capsule((0.0, hip_y), foot, limb_radius), bottoms * darken)
        if look.shorts:
            knee = (0.5 * foot[0], hip_y + 0.5 * (foot[1] - hip_y))
            canvas.paint(canvas.capsule(knee, foot, limb_radius * 0.8), np.asarray(look.skin) * darken)
        shoe = canvas.ellipse(foot[0] + 0.025, foot[1] + 0.005, 0.05, 0.025)
        canvas.paint(shoe, np.asarray(look.shoes) * darken)

    def arm(angle: float, darken: float) -> None:
        shoulder = (0.0, shoulder_y + 0.02)
        hand = (np.sin(angle) * arm_length, shoulder[1] + np.cos(angle) * arm_length)
        elbow = (0.5 * (shoulder[0] + hand[0]), 0.5 * (shoulder[1] + hand[1]))
        sleeve_end = hand if look.long_sleeves else elbow
        canvas.paint(canvas.capsule(elbow, hand, arm_radius), np.asarray(look.skin) * darken)
        canvas.paint(canvas.capsule(shoulder, sleeve_end, arm_radius * 1.1), tops * darken)

    leg(-swing, shade)
    arm(swing * 0.8, shade)
    if look.backpack is not None:
        canvas.paint(
            canvas.rect(-torso_half - 0.075, -torso_half + 0.02, shoulder_y + 0.02, 0.45), look.backpack
        )
    taper = (canvas.y - shoulder_y) / (hip_y - shoulder_y)
    torso = (
        (np.abs(canvas.x) <= torso_half * (1.0 - 0.15 * taper))
        & (canvas.y >= shoulder_y)
        & (canvas.y <= hip_y)
    )
    canvas.paint(torso, tops)
    canvas.paint(canvas.rect(-0.02, 0.02, head * 0.9, shoulder_y + 0.01), look.skin)
    leg(swing, 1.0)
    head_cy, head_ry = 0.012 + head / 2, head / 2
    canvas.paint(canvas.ellipse(0.0, head_cy, head_ry * 0.8, head_ry), look.skin)
    hair = canvas.ellipse(0.0, head_cy, head_ry * 0.85, head_ry * 1.05) & (
        (canvas.y < head_cy - 0.25 * head_ry) | (canvas.x < -0.2 * head_ry)
    )
    if look.long_hair:
        hair = hair | canvas.rect(-head_ry * 0.85, -0.1 * head_ry, head_cy, shoulder_y + 0.06)
    canvas.paint(hair, look.hair)
    if look.hat is not None:
        canvas.paint(canvas.ellipse(0.0, head_cy - 0.45 * head_ry, head_ry * 0.9, head_ry * 0.6), look.hat)
        canvas.paint(
            canvas.rect(-0.2 * head_ry, head_ry * 1.3, head_cy - 0.5 * head_ry, head_cy - 0.3 * head_ry),
            look.hat,
        )
    arm(-swing * 0.8, 1.0)
    if look.bag is not None:
        canvas.paint(canvas.capsule((-torso_half, shoulder_y), (torso_half, hip_y - 0.06), 0.008), look.bag)
        canvas.paint(canvas.rect(0.0, torso_half + 0.07, hip_y - 0.08, hip_y + 0.05), look.bag)
    rgb, alpha = canvas.downsampled()
    if not facing_right:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    return np.ascontiguousarray(rgb), np.ascontiguousarray(alpha)


@dataclass(frozen=True)
class Sprite:
    """A drawn person: rgb (h, w, 3) premultiplied by alpha (h, w); ``box`` = (x0, y0, x1, y1), end-exclusive,
    the tight extent of alpha ≥ 0.3 inside the sprite (the ground-truth box of the person); ``ink`` the extent
    of alpha > 0 (only that part changes the frame when the sprite is composited)."""

    rgb: np.ndarray
    alpha: np.ndarray
    box: tuple[int, int, int, int]
    ink: tuple[int, int, int, int]

    def mirrored(self) -> Sprite:
        """The same sprite flipped left–right (views of the same arrays)."""
        width = self.alpha.shape[1]
        (bx0, by0, bx1, by1), (ix0, iy0, ix1, iy1) = self.box, self.ink
        return Sprite(
            self.rgb[:, ::-1],
            self.alpha[:, ::-1],
            (width - bx1, by0, width - bx0, by1),
            (width - ix1, iy0, width - ix0, iy1),
        )


def tight_box(alpha: np.ndarray, threshold: float = 0.3) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end-exclusive, of the pixels with ``alpha >= threshold``; (0, 0, w, h) when none."""
    rows = np.nonzero((alpha >= threshold).any(axis=1))[0]
    cols = np.nonzero((alpha >= threshold).any(axis=0))[0]
    if rows.size == 0:
        return (0, 0, alpha.shape[1], alpha.shape[0])
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def resize_sprite(rgb: np.ndarray, alpha: np.ndarray, height_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample a premultiplied sprite (rgb (h, w, 3), alpha (h, w)) to ``height_px`` rows (bilinear,
    antialiased when shrinking); the width keeps sprite_width(height_px)."""
    size = (sprite_width(height_px), height_px)
    planes = [rgb[..., channel] for channel in range(3)] + [alpha]
    resized = [
        np.asarray(Image.fromarray(plane, mode="F").resize(size, Image.Resampling.BILINEAR))
        for plane in planes
    ]
    alpha_out = np.clip(resized[3], 0.0, 1.0)
    rgb_out = np.clip(np.stack(resized[:3], axis=-1), 0.0, 255.0 * alpha_out[..., None])
    return np.ascontiguousarray(rgb_out, dtype=np.float32), np.ascontiguousarray(alpha_out, dtype=np.float32)


class SpriteCache:
    """Sprites keyed by (identity, height, phase, facing), read-only, in two bounded LRU caches.

    Each (identity, phase) is drawn once at ``canonical_height`` (one sample per pixel, facing right) and
    resampled to the requested height; left-facing sprites are mirrored views. The drawings are a pure
    function of the key, so what the caches hold never changes a pixel, only the time spent.
    ``capacity`` bounds the resized sprites (≈ 4·h·w·4 bytes each), ``canonical_capacity`` the drawings.
    """

    def __init__(
        self,
        looks: dict[int, Appearance],
        canonical_height: int = 160,
        capacity: int = 1000,
        canonical_capacity: int = 360,
    ):
        if canonical_height < 16:
            raise ValueError(f"canonical_height must be ≥ 16 px, got {canonical_height}")
        if capacity < 2 or canonical_capacity < 1:
            raise ValueError(f"cache capacities must be ≥ 2 and ≥ 1, got {capacity}, {canonical_capacity}")
        self.looks = looks
        self.canonical_height = canonical_height
        self.capacity, self.canonical_capacity = capacity, canonical_capacity
        self._canonical: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._sprites: OrderedDict[tuple[int, int, int, bool], Sprite] = OrderedDict()
        self.misses = 0

    def get(self, identity: int, height_px: int, phase: int, facing_right: bool) -> Sprite:
        """The sprite of ``identity`` ``height_px`` tall at gait ``phase``, facing right or left."""
        phase %= GAIT_PHASES
        key = (identity, height_px, phase, facing_right)
        sprite = self._sprites.get(key)
        if sprite is not None:
            self._sprites.move_to_end(key)
            return sprite
        self.misses += 1
        if facing_right:
            rgb, alpha = resize_sprite(*self._drawing(identity, phase), height_px)
            sprite = Sprite(rgb, alpha, tight_box(alpha), tight_box(alpha, SMALLEST_ALPHA))
        else:
            sprite = self.get(identity, height_px, phase, True).mirrored()
        self._sprites[key] = sprite
        while len(self._sprites) > self.capacity:
            self._sprites.popitem(last=False)
        return sprite

    def _drawing(self, identity: int, phase: int) -> tuple[np.ndarray, np.ndarray]:
        key = (identity, phase)
        drawing = self._canonical.get(key)
        if drawing is None:
            drawing = render_person(self.looks[identity], self.canonical_height, phase, True, 1)
            self._canonical[key] = drawing
            while len(self._canonical) > self.canonical_capacity:
                self._canonical.popitem(last=False)
        else:
            self._canonical.move_to_end(key)
        return drawing

    def clear(self) -> None:
        """Forget the resized sprites (canonical drawings are kept)."""
        self._sprites.clear()

    def forget(self, identity: int) -> None:
        """Drop everything drawn for ``identity``."""
        for key in [key for key in self._sprites if key[0] == identity]:
            del self._sprites[key]
        for phase in range(GAIT_PHASES):
            self._canonical.pop((identity, phase), None)
