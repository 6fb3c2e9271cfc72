"""Small test videos written with PyAV from exact pixel arrays, shared by the decoding tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

WIDTH, HEIGHT, NUM_FRAMES, GOP = 96, 64, 30, 8
CODECS = {  # name: (encoder, file suffix, pixel format, encoder options)
    "mjpeg": ("mjpeg", ".avi", "yuvj420p", {"qmin": "1", "qmax": "3"}),
    "vp9": ("libvpx-vp9", ".webm", "yuv420p", {"crf": "10", "g": str(GOP)}),
    "h264": ("libx264", ".mp4", "yuv420p", {"crf": "12", "g": str(GOP), "bf": "2"}),
}


def write_video(path: Path, codec: str, frame_pixels: Callable[[int], np.ndarray]) -> None:
    """Encode NUM_FRAMES frames of ``frame_pixels(i)`` (uint8 [HEIGHT, WIDTH, 3]) with ``codec``; the test
    using them skips where PyAV (an optional dependency) is missing."""
    av = pytest.importorskip("av", reason="writing the test videos needs PyAV (the data extra)")

    encoder, _, pixel_format, options = CODECS[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=30)
        stream.width, stream.height, stream.pix_fmt, stream.options = WIDTH, HEIGHT, pixel_format, options
        for frame in range(NUM_FRAMES):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame_pixels(frame), format="rgb24")))
        container.mux(stream.encode())


def write_codec_videos(folder: Path, stem: str, frame_pixels: Callable[[int], np.ndarray]) -> dict[str, str]:
    """One video per codec in CODECS: codec → path of ``<folder>/<stem>_<codec><suffix>``."""
    paths = {}
    for codec, (_, suffix, _, _) in CODECS.items():
        paths[codec] = str(folder / f"{stem}_{codec}{suffix}")
        write_video(Path(paths[codec]), codec, frame_pixels)
    return paths
