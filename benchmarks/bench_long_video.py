"""Benchmark: does decoding cost grow with where the boxes lie in a long video?

A surveillance clip is long (thousands of frames) and its boxes spread over all of it. A decoder that
seeks to the keyframe before each wanted frame pays the same for boxes late in the file as for early ones;
one that decodes from the start of the file for every sample pays more the later the boxes lie, so a
whole video costs the square of its length. This benchmark writes one clip per codec (``--video-frames``
frames of 320×240 moving texture, a keyframe every 50 frames), places a 64×128 box on every
``--box-every``-th frame of its first and of its last tenth, and times each decoding path over the early
boxes, over the late ones, and over boxes on every ``--box-every``-th frame of the whole clip
(``build_crop_loader`` at 64×32, one pass each).

Columns: ``path``, ``codec``, ``video_frames``, ``boxes`` (per tenth), ``early_crops_per_s`` and
``late_crops_per_s`` (crops per second over each tenth), ``late_over_early_time`` (the late tenth's time
over the early one's), ``whole_boxes`` and ``whole_crops_per_s`` (the whole clip), ``threads``,
``load_avg``. A decoder that seeks (PyAV) pays the same for both tenths (ratio about 1). DALI streams a
video once from its first frame, so a pass over the late tenth alone decodes the nine tenths before it
(ratio about 10, linear in the position) while a pass over the whole clip decodes it once; a decoder that
restarts from the file's start for every group of boxes would be slow on the whole clip (its cost grows
with the square of the clip's length).

    python benchmarks/bench_long_video.py --codecs mjpeg,vp9,h264 --paths pyav,dali-cpu --video-frames 3000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: `benchmarks` imports
from benchmarks.common import append_rows, choice_list, decode_path_problem, provenance
from reidscale.data.decode.loader import build_crop_loader
from reidscale.data.records import CropRecord

CODECS = {"mjpeg": ("mjpeg", ".avi", "yuvj420p"), "vp9": ("libvpx-vp9", ".webm", "yuv420p"),
          "h264": ("libx264", ".mp4", "yuv420p")}  # fmt: skip
PATHS = ("pyav", "dali-cpu", "dali-gpu")
PATH_CODECS = {"pyav": tuple(CODECS), "dali-cpu": ("mjpeg", "vp9"), "dali-gpu": tuple(CODECS)}
FRAME_SIZE = (240, 320)
BOX = (10, 10, 64, 128)
OUT_SIZE = (64, 32)
KEYFRAME_INTERVAL = 50


def write_clip(path: Path, codec: str, frames: int) -> Path:
    """A ``frames``-frame clip of a texture sliding one pixel per frame, a keyframe every 50 frames."""
    import av

    encoder, _, pix_fmt = CODECS[codec]
    texture = np.random.default_rng(0).integers(0, 256, (*FRAME_SIZE, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=25)
        stream.height, stream.width = FRAME_SIZE
        stream.pix_fmt = pix_fmt
        options = {"g": str(KEYFRAME_INTERVAL)}
        if codec == "vp9":
            options.update({"deadline": "realtime", "cpu-used": "8"})
        if codec == "h264":
            options.update({"preset": "ultrafast", "bf": "0"})
        stream.options = options
        for index in range(frames):
            picture = av.VideoFrame.from_ndarray(np.roll(texture, index, axis=1), format="rgb24")
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def span_records(path: Path, first: int, last: int, every: int) -> list[CropRecord]:
    return [CropRecord(str(path), frame, BOX, pid=0) for frame in range(first, last, every)]


def time_pass(records: list[CropRecord], path: str, threads: int) -> float:
    backend = "pyav" if path == "pyav" else "dali"
    device = "gpu" if path == "dali-gpu" else "cpu"
    loader = build_crop_loader(records, 64, OUT_SIZE, backend, device, num_threads=threads)
    start = time.perf_counter()
    crops = sum(len(indices) for indices, _ in loader)
    if device == "gpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if crops != len(records):
        raise RuntimeError(f"{path}: {crops} of {len(records)} crops ({loader.stats.summary()})")
    return seconds


def measure(clip: Path, codec: str, path: str, frames: int, every: int, threads: int) -> dict:
    tenth = frames // 10
    early = span_records(clip, 0, tenth, every)
    late = span_records(clip, frames - tenth, frames, every)
    whole = span_records(clip, 0, frames, every)
    time_pass(early[:4], path, threads)  # warm-up: imports, pipeline construction
    early_s, late_s = time_pass(early, path, threads), time_pass(late, path, threads)
    whole_s = time_pass(whole, path, threads)
    return {
        "path": path,
        "codec": codec,
        "video_frames": frames,
        "boxes": len(early),
        "early_crops_per_s": round(len(early) / early_s, 1),
        "late_crops_per_s": round(len(late) / late_s, 1),
        "late_over_early_time": round(late_s / early_s, 2),
        "whole_boxes": len(whole),
        "whole_crops_per_s": round(len(whole) / whole_s, 1),
        "threads": threads,
        "load_avg": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--video-frames", type=int, default=3000, help="frames of each clip")
    parser.add_argument("--box-every", type=int, default=5, help="a box on every n-th frame of each span")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--output", default="long_video", help="results CSV name or path")
    args = parser.parse_args(argv)
    codecs = choice_list(parser, "--codecs", args.codecs, tuple(CODECS))
    paths = choice_list(parser, "--paths", args.paths, PATHS)
    if args.video_frames < 100 or args.box_every < 1 or args.threads < 1:
        raise SystemExit("--video-frames must be >= 100, --box-every and --threads >= 1")
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        for codec in codecs:
            clip = write_clip(Path(temp) / f"clip_{codec}{CODECS[codec][1]}", codec, args.video_frames)
            for path in paths:
                reason = decode_path_problem(path) or (
                    None if codec in PATH_CODECS[path] else "codec not on this path"
                )
                if reason:
                    print(f"skip {path}/{codec}: {reason}")
                    continue
                rows.append(measure(clip, codec, path, args.video_frames, args.box_every, args.threads))
                print(rows[-1], flush=True)
    if not rows:
        raise SystemExit("no case could run here")
    print(f"rows appended to {append_rows(args.output, rows, provenance())}")


if __name__ == "__main__":
    main()
