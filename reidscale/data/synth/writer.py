"""Files of a synthetic corpus: videos (PyAV), MOT tracklet text, ground-truth CSV; all written atomically."""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ...utils.io import atomic_write, atomic_write_text
from .config import CODECS

CONTAINER_FORMATS = {".mp4": "mp4", ".webm": "webm", ".avi": "avi"}
GROUND_TRUTH_HEADER = ("video", "track_id", "identity", "first_frame", "last_frame")
CORPUS_OUTPUTS = ("videos", "tracklets", "market", "ground_truth.csv", "corpus.json")


def encoder_options(codec: str, gop: int) -> dict[str, str]:
    """PyAV/FFmpeg options: fixed keyframe interval ``gop``, no B-frames (h264/vp9); high-quality MJPEG.

    x264 "ultrafast" at CRF 18 encodes 640×360 at ≈ 360 frames/s on one core here ("veryfast": ≈ 240) for
    ≈ 2.5× the bytes; the decoded pixels stay near-lossless, which is what the crops need.
    """
    if codec == "h264":
        return {
            "preset": "ultrafast",
            "crf": "18",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0",
        }
    if codec == "vp9":
        return {
            "deadline": "realtime",
            "cpu-used": "8",
            "crf": "24",
            "b": "0",
            "g": str(gop),
            "keyint_min": str(gop),
        }
    if codec == "mjpeg":
        return {"qmin": "2", "qmax": "3"}
    raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(CODECS)}")


def video_file_name(video: str, codec: str) -> str:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(CODECS)}")
    return video + CODECS[codec][1]


def encode_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    codec: str,
    fps: int,
    gop: int,
    size: tuple[int, int],
) -> int:
    """Encode RGB uint8 frames (H, W, 3), ``size`` = (W, H), into ``path`` atomically; returns the count."""
    import av

    encoder, extension, pixel_format = CODECS[codec]
    width, height = size
    written = 0

    def write(tmp: Path) -> None:
        nonlocal written
        with av.open(str(tmp), "w", format=CONTAINER_FORMATS[extension]) as container:
            stream = container.add_stream(encoder, rate=fps, options=encoder_options(codec, gop))
            stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
            stream.codec_context.gop_size = gop
            for index, pixels in enumerate(frames):
                if pixels.shape != (height, width, 3) or pixels.dtype != np.uint8:
                    raise ValueError(
                        f"{path}: frame {index} is {pixels.dtype}{pixels.shape}, "
                        f"expected uint8({height}, {width}, 3)"
                    )
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = index
                container.mux(stream.encode(frame))
                written = index + 1
            container.mux(stream.encode(None))

    atomic_write(path, write)
    return written


def mot_text(rows: Iterable[tuple[int, int, int, int, int, int, float]]) -> str:
    """MOT-challenge results lines ``frame,track_id,x,y,w,h,conf,-1,-1,-1``."""
    return "".join(f"{f},{t},{x},{y},{w},{h},{c:.3f},-1,-1,-1\n" for f, t, x, y, w, h, c in rows)


def write_ground_truth(path: str | os.PathLike, rows: list[tuple[str, int, int, int, int]]) -> None:
    """ground_truth.csv: header GROUND_TRUTH_HEADER, rows sorted by (video, track id, first frame)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(GROUND_TRUTH_HEADER)
    writer.writerows(sorted(rows))
    atomic_write_text(path, buffer.getvalue())


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir``; a non-empty one is an error unless ``overwrite`` (removes earlier outputs only)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"synth output {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"synth output folder {out_dir} is not empty; choose an empty folder or pass overwrite=True "
            f"(removes {', '.join(CORPUS_OUTPUTS)} there)"
        )
    for name in CORPUS_OUTPUTS:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def replace_folder(staging: Path, target: Path) -> None:
    """Move the written ``staging`` folder to ``target`` (replacing it): no reader sees half a folder."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old)
    else:
        os.replace(staging, target)
