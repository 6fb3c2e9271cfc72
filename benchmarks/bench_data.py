"""Benchmark: decoding, cropping and multi-crop views per data path.

Paths: ``dali-cpu`` (DALI's CPU video decoder: mjpeg, vp9; DALI CPU views), ``pyav`` (PyAV decoder: h264,
mjpeg, vp9; torch CPU views) and ``dali-gpu`` (NVDEC "mixed" decoder, crops and DALI views on the GPU; only
when CUDA is present). Views: ``none`` (uint8 crops at 256×128) or ``cion`` (2 global 256×128 + 8 local
128×64 float views per crop, ``cion_multicrop``).

Data: a synthetic corpus built here with ``reidscale.data.synth.build_corpus`` from the ``tiny`` scale at
640×360 with ``--frames`` frames per video (6 videos, about 5 people per frame), one corpus per codec, boxes
read through ``load_manifest("video_tracklets", ...)``. Each case runs once on a few records (warm-up:
imports, pipeline construction), then is timed over one full pass of the loader.

Columns: ``frames_per_s`` decoded frames per second (PyAV counts every frame decoded on the way from a
keyframe, DALI the distinct frames it returned); ``crops_per_s`` finished crops per second, each view
counted (= source crops/s × views per crop); ``source_crops_per_s`` tracklet boxes served per second;
``threads`` the decoder/pipeline threads; ``load_avg`` the 1-minute load average after the case.

Goal (not measurable on a CPU-only machine): on one H100 the ``dali-gpu`` path with ``cion`` views must
reach ≥ 2,000 source crops/s (20,000 views/s), so that the data never starves CION training.

    python benchmarks/bench_data.py --codecs h264,mjpeg,vp9 --paths dali-cpu,pyav,dali-gpu \
        --views none,cion --frames 120 --records 0 --output data
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: `benchmarks` imports
from benchmarks.common import append_rows, choice_list, decode_path_problem, provenance
from reidscale.data.decode.loader import build_crop_loader
from reidscale.data.decode.multicrop_loader import build_view_loader
from reidscale.data.manifests import load_manifest
from reidscale.data.records import CropRecord
from reidscale.data.synth import SCALES, build_corpus
from reidscale.data.views.spec import cion_multicrop

PATHS = ("dali-cpu", "pyav", "dali-gpu")
VIEWS = ("none", "cion")
CODECS = ("h264", "mjpeg", "vp9")
PATH_CODECS = {"dali-cpu": ("mjpeg", "vp9"), "pyav": CODECS, "dali-gpu": CODECS}
SOURCE_SIZE = (256, 128)
BATCH_SIZE = 64
WARMUP_RECORDS = 32


def corpus_records(workdir: Path, codec: str, frames: int) -> list[CropRecord]:
    """Records of a tiny-scale synthetic corpus at 640×360, ``frames`` frames per video, in ``codec``."""
    scale = SCALES["tiny"].with_overrides(frame_width=640, frame_height=360, frames_per_video=frames)
    out = workdir / f"corpus_{codec}_{frames}"
    if not (out / "corpus.json").exists():
        build_corpus(out, scale, seed=0, codec=codec, overwrite=True)
    return load_manifest("video_tracklets", out).records


def make_loader(records: list[CropRecord], path: str, views: str, threads: int):
    backend = "pyav" if path == "pyav" else "dali"
    device = "gpu" if path == "dali-gpu" else "cpu"
    options = {"backend": backend, "device": device, "num_threads": threads}
    if views == "none":
        return build_crop_loader(records, BATCH_SIZE, SOURCE_SIZE, **options)
    return build_view_loader(records, BATCH_SIZE, cion_multicrop(num_local=8), seed=0, **options)


def run_pass(loader) -> None:
    last = None
    for _, output in loader:
        last = output[-1] if isinstance(output, list) else output
    if last is not None and last.is_cuda:
        torch.cuda.synchronize()


def measure(records: list[CropRecord], path: str, codec: str, views: str, threads: int) -> dict:
    """One timed pass of ``path`` over ``records`` after a warm-up pass on a few of them."""
    run_pass(make_loader(records[:WARMUP_RECORDS], path, views, threads))
    loader = make_loader(records, path, views, threads)
    start = time.perf_counter()
    run_pass(loader)
    seconds = time.perf_counter() - start
    stats = loader.stats
    if stats.num_skipped:
        print(f"  {path}/{codec}/{views}: {stats.summary()}", file=sys.stderr)
    views_per_crop = 1 if views == "none" else cion_multicrop(num_local=8).num_views
    return {
        "path": path,
        "codec": codec,
        "views": views if views == "none" else f"cion-2+{views_per_crop - 2}",
        "records": len(records),
        "frames_per_s": round(stats.decoded_frames / seconds, 1),
        "crops_per_s": round(stats.crops * views_per_crop / seconds, 1),
        "source_crops_per_s": round(stats.crops / seconds, 1),
        "seconds": round(seconds, 2),
        "threads": threads,
        "load_avg": round(os.getloadavg()[0], 2),
    }


TABLE_COLUMNS = ("path", "codec", "views", "records", "frames_per_s", "crops_per_s", "source_crops_per_s")


def print_row(row: dict | None) -> None:
    """One table line (the header for None)."""
    cells = TABLE_COLUMNS if row is None else [row[column] for column in TABLE_COLUMNS]
    print(" ".join(f"{cell!s:>18}" for cell in cells), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--views", default=",".join(VIEWS))
    parser.add_argument("--frames", type=int, default=120, help="frames per synthetic video (6 videos)")
    parser.add_argument("--records", type=int, default=0, help="records per case (0: the whole corpus)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--workdir", default=None, help="where corpora are built (default: a temp dir)")
    parser.add_argument("--output", default="data", help="results CSV name or path")
    args = parser.parse_args(argv)
    codecs = choice_list(parser, "--codecs", args.codecs, CODECS)
    paths = choice_list(parser, "--paths", args.paths, PATHS)
    views = choice_list(parser, "--views", args.views, VIEWS)
    if args.frames < 2 or args.threads < 1 or args.records < 0:
        raise SystemExit(
            f"--frames must be >= 2, --threads >= 1, --records >= 0; got {args.frames}, {args.threads}, "
            f"{args.records}"
        )
    with tempfile.TemporaryDirectory() as temp:
        workdir = Path(args.workdir or temp)
        rows = []
        print_row(None)
        for codec in codecs:
            records = corpus_records(workdir, codec, args.frames)
            records = records[: args.records] if args.records else records
            for path in paths:
                reason = decode_path_problem(path)
                if codec not in PATH_CODECS[path] or reason:
                    print(f"skip {path}/{codec}: {reason or 'codec not decodable on this path'}")
                    continue
                for view in views:
                    rows.append(measure(records, path, codec, view, args.threads))
                    print_row(rows[-1])
    if not rows:
        raise SystemExit("no case could run here")
    print(f"rows appended to {append_rows(args.output, rows, provenance())}")


if __name__ == "__main__":
    main()
