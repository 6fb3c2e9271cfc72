"""Fast frame rendering for one video: only the pixels people touch go through compositing and blur.

``render_frame`` (scene.py) composites every walker onto a fresh copy of the background and runs the camera's
optics over the whole frame. Most of a frame is static background, and colour cast, illumination and the
3-tap blur are linear and local, so ``VideoRenderer`` precomputes them once for the background and per
frame recomputes only the rects that sprites changed (grown by the blur's reach). Operations and their order
are the same as in ``apply_optics``, so the frames are bit-identical to ``render_frame``'s.
"""

from __future__ import annotations

import numpy as np

from .people import SpriteCache
from .scene import Camera, Rect, SensorNoise, Walker, _blur, _sprite_origin, composite_sprite

BLUR_REACH = 1  # pixels a 3-tap blur moves a value in each direction


def grow(rect: Rect, margin: int, height: int, width: int) -> Rect:
    """``rect`` (y0, y1, x0, x1) grown by ``margin`` on every side and clipped to height × width."""
    y0, y1, x0, x1 = rect
    return (max(y0 - margin, 0), min(y1 + margin, height), max(x0 - margin, 0), min(x1 + margin, width))


class VideoRenderer:
    """Renders the frames of one video of ``camera`` (sensor noise from ``noise``, illumination ``light``).

    Keeps a float32 (H, W, 3) canvas between frames and restores only the rects drawn into the previous frame.
    """

    def __init__(self, camera: Camera, cache: SpriteCache, noise: SensorNoise, light: float = 1.0):
        self.camera, self.cache, self.noise = camera, cache, noise
        self.factor = np.asarray(camera.gain, np.float32) * np.float32(camera.brightness * light)
        self.reach = BLUR_REACH if camera.blur > 0.05 else 0
        self.canvas = camera.background.copy()
        self.optics_background = _blur(camera.background * self.factor, camera.blur)
        self.frame = np.empty_like(camera.background)
        self._drawn: list[Rect] = []

    def render(self, walkers: list[Walker], t: int) -> np.ndarray:
        """Frame ``t`` as uint8 (H, W, 3): background, walkers far to near, then the camera's optics."""
        camera, canvas = self.camera, self.canvas
        for y0, y1, x0, x1 in self._drawn:
            canvas[y0:y1, x0:x1] = camera.background[y0:y1, x0:x1]
        states = [(walker, *walker.state(camera, t)) for walker in walkers if walker.may_show(camera, t)]
        drawn = []
        for walker, foot_x, foot_y, height_px, phase, right in sorted(states, key=lambda state: state[2]):
            sprite = self.cache.get(walker.identity, height_px, phase, right)
            rect = composite_sprite(canvas, sprite, *_sprite_origin(foot_x, foot_y, sprite.alpha.shape))
            if rect is not None:
                drawn.append(rect)
        self._drawn = drawn
        noise = self.noise.sample()
        np.add(self.optics_background, noise, out=self.frame)
        for rect in drawn:
            self._redo_optics(rect, noise)
        self.frame += 0.5
        return np.clip(self.frame, 0, 255, out=self.frame).astype(np.uint8)

    def _redo_optics(self, rect: Rect, noise: np.ndarray) -> None:
        """Recompute colour cast, light, blur and noise of the frame pixels that canvas ``rect`` reaches.

        The blur of a pixel reads ``reach`` pixels around it: the kept rect is ``rect`` grown by ``reach``,
        computed from ``rect`` grown by 2·``reach``; that one's own border is dropped (wrong values, except
        at the frame edge, where the full-frame blur replicates the same way).
        """
        height, width, _ = self.canvas.shape
        ky0, ky1, kx0, kx1 = grow(rect, self.reach, height, width)
        cy0, cy1, cx0, cx1 = grow(rect, 2 * self.reach, height, width)
        region = self.canvas[cy0:cy1, cx0:cx1] * self.factor
        blurred = _blur(region, self.camera.blur)[ky0 - cy0 : ky1 - cy0, kx0 - cx0 : kx1 - cx0]
        np.add(blurred, noise[ky0:ky1, kx0:kx1], out=self.frame[ky0:ky1, kx0:kx1])
