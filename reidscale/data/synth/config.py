"""Sizes and noise rates of a synthetic corpus: ``SynthScale``, ``NoiseConfig`` and the named ``SCALES``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

CODECS: dict[str, tuple[str, str, str]] = {
    "h264": ("libx264", ".mp4", "yuv420p"),
    "vp9": ("libvpx-vp9", ".webm", "yuv420p"),
    "mjpeg": ("mjpeg", ".avi", "yuvj420p"),
}
"""codec name → (PyAV encoder, file extension, pixel format)."""

MAX_MARKET_CAMERAS = 6


@dataclass(frozen=True)
class NoiseConfig:
    """Tracker noise applied to the true tracks of every video.

    switch_prob:          probability that a crossing (two people's boxes reach IoU ≥ crossing_iou) swaps
                          their track ids from the crossing frame on: an identity switch inside both tracklets
    fragment_prob:        probability that a tracklet is broken into two track ids at a random frame
    false_positive_rate:  expected non-person tracklets (on background clutter) per true person in a video
    jitter:               standard deviation of the box corners' noise, as a fraction of the box height
    crossing_iou:         IoU at which two people's boxes count as crossing
    """

    switch_prob: float = 0.1
    fragment_prob: float = 0.1
    false_positive_rate: float = 0.05
    jitter: float = 0.02
    crossing_iou: float = 0.3

    def validate(self) -> None:
        """ValueError naming the field when a rate or size is out of range."""
        for name in ("switch_prob", "fragment_prob", "false_positive_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"NoiseConfig.{name} must be a probability in [0, 1], got {value}")
        if not 0.0 <= self.jitter <= 0.5:
            raise ValueError(
                f"NoiseConfig.jitter must lie in [0, 0.5] (fraction of box height), got {self.jitter}"
            )
        if not 0.0 < self.crossing_iou < 1.0:
            raise ValueError(f"NoiseConfig.crossing_iou must lie in (0, 1), got {self.crossing_iou}")


@dataclass(frozen=True)
class SynthScale:
    """Everything that sets the size of a corpus.

    name:                       scale name written to corpus.json
    num_pretrain_identities:    identities that walk through the videos (ground-truth ids 0..n-1)
    num_market_train_identities: further identities rendered into market/bounding_box_train only
    num_market_test_identities: further identities rendered into market/query and market/bounding_box_test
    num_cameras:                cameras (each with its own background, light, colour cast, scale, blur, noise)
    videos_per_camera:          videos recorded by each camera
    frames_per_video:           frames of every video
    people_per_video:           identities walking through each video (appearances are spread over cameras)
    frame_width, frame_height:  frame size in pixels (both even: yuv420p needs it)
    fps:                        frames per second written into the videos
    gop:                        keyframe interval of h264 / vp9 (a random access decodes ≤ this many frames)
    person_height:              (min, max) person height as a fraction of the frame height (near → far)
    market_images_per_camera:   images per identity and camera in the market folder
    market_distractors:         gallery images of people outside every identity set (pid 0)
    market_junk:                gallery images of background only (pid -1)
    market_crop_size:           (height, width) of the market JPEGs
    noise:                      tracker noise rates

    Named scales (``SCALES``), build times with ``workers=2`` on 2 CPU cores, h264:

    tiny:   3 cameras × 2 videos × 40 frames at 320×180, 12 identities; ≈ 2.5 s.
    demo:   4 × 4 × 100 frames at 384×216, 100 identities, 14 per video; ≈ 17 s (24 s in one process).
    large:  6 × 40 × 750 frames at 512×288 = 180,000 frames = 2.0 h of video, 3,000 pre-training
            identities in ≈ 3.04 videos each (38 per video, ≈ 6 on screen at a time), 1,013,369 boxes,
            10,445 tracklets (seed 0); market 600 + 600 identities, 14,980 images. Built in 20 min 24 s
            (≈ 150 frames/s, 4.0 GB) while other jobs shared the machine.
    """

    name: str
    num_pretrain_identities: int
    num_market_train_identities: int
    num_market_test_identities: int
    num_cameras: int
    videos_per_camera: int
    frames_per_video: int
    people_per_video: int
    frame_width: int = 384
    frame_height: int = 216
    fps: int = 25
    gop: int = 25
    person_height: tuple[float, float] = (0.42, 0.70)
    market_images_per_camera: int = 3
    market_distractors: int = 4
    market_junk: int = 2
    market_crop_size: tuple[int, int] = (128, 64)
    noise: NoiseConfig = field(default_factory=NoiseConfig)

    @property
    def num_videos(self) -> int:
        return self.num_cameras * self.videos_per_camera

    @property
    def num_identities(self) -> int:
        return (
            self.num_pretrain_identities + self.num_market_train_identities + self.num_market_test_identities
        )

    @property
    def appearance_slots(self) -> int:
        """(identity, video) appearances in all videos together."""
        return self.num_videos * self.people_per_video

    @property
    def sprite_height(self) -> int:
        """Height at which each person is drawn once before resampling (≈ the tallest person on screen)."""
        return max(32, round(self.frame_height * self.person_height[1] * 1.15))

    @property
    def video_hours(self) -> float:
        return self.num_videos * self.frames_per_video / self.fps / 3600.0

    def with_overrides(self, **changes: object) -> SynthScale:
        """A copy with some fields changed (``noise`` may be given as a dict of NoiseConfig fields)."""
        noise = changes.pop("noise", None)
        if isinstance(noise, dict):
            changes["noise"] = replace(self.noise, **noise)
        elif noise is not None:
            changes["noise"] = noise
        return replace(self, **changes)

    def validate(self) -> None:
        """ValueError naming the field and the expected range for every inconsistent setting."""
        for item in fields(self):
            value = getattr(self, item.name)
            counted = isinstance(value, int) and item.name not in ("market_distractors", "market_junk")
            if counted and value < 1:
                raise ValueError(f"SynthScale.{item.name} must be ≥ 1, got {value}")
        if self.market_distractors < 0 or self.market_junk < 0:
            raise ValueError("SynthScale.market_distractors and market_junk must be ≥ 0")
        if self.frame_width % 2 or self.frame_height % 2 or min(self.frame_width, self.frame_height) < 32:
            raise ValueError(
                "SynthScale frame size must be even and ≥ 32 (yuv420p), "
                f"got {self.frame_width}×{self.frame_height}"
            )
        low, high = self.person_height
        if not 0.1 <= low <= high <= 0.95:
            raise ValueError(
                f"SynthScale.person_height must satisfy 0.1 ≤ min ≤ max ≤ 0.95, got {self.person_height}"
            )
        if self.people_per_video > self.num_pretrain_identities:
            raise ValueError(
                f"SynthScale.people_per_video ({self.people_per_video}) exceeds num_pretrain_identities "
                f"({self.num_pretrain_identities}): a video cannot hold the same identity twice"
            )
        if self.appearance_slots < 2 * self.num_pretrain_identities:
            raise ValueError(
                f"SynthScale: {self.num_videos} videos × {self.people_per_video} people = "
                f"{self.appearance_slots} appearances, fewer than 2 per pre-training identity "
                f"({self.num_pretrain_identities}); "
                "raise people_per_video or videos, or lower num_pretrain_identities"
            )
        if self.num_cameras < 2:
            raise ValueError(
                f"SynthScale.num_cameras must be ≥ 2 (cross-camera identities), got {self.num_cameras}"
            )
        if self.num_market_test_identities < 2:
            raise ValueError("SynthScale.num_market_test_identities must be ≥ 2 for a query/gallery split")
        self.noise.validate()


SCALES: dict[str, SynthScale] = {
    "tiny": SynthScale(
        name="tiny",
        num_pretrain_identities=12,
        num_market_train_identities=6,
        num_market_test_identities=6,
        num_cameras=3,
        videos_per_camera=2,
        frames_per_video=40,
        people_per_video=5,
        frame_width=320,
        frame_height=180,
        market_images_per_camera=2,
        market_distractors=2,
        market_junk=1,
    ),
    "demo": SynthScale(
        name="demo",
        num_pretrain_identities=100,
        num_market_train_identities=50,
        num_market_test_identities=50,
        num_cameras=4,
        videos_per_camera=4,
        frames_per_video=100,
        people_per_video=14,
        market_images_per_camera=3,
        market_distractors=20,
        market_junk=10,
    ),
    "large": SynthScale(
        name="large",
        num_pretrain_identities=3000,
        num_market_train_identities=600,
        num_market_test_identities=600,
        num_cameras=6,
        videos_per_camera=40,
        frames_per_video=750,
        people_per_video=38,
        frame_width=512,
        frame_height=288,
        market_images_per_camera=3,
        market_distractors=500,
        market_junk=200,
        market_crop_size=(256, 128),
    ),
}


def resolve_scale(scale: str | SynthScale) -> SynthScale:
    """The named scale from SCALES, or ``scale`` itself; validated."""
    if isinstance(scale, str):
        if scale not in SCALES:
            raise ValueError(f"unknown synth scale {scale!r}; expected one of {sorted(SCALES)}")
        scale = SCALES[scale]
    scale.validate()
    return scale
