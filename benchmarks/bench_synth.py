"""Benchmark: how long ``reidscale synth`` takes to build each scale of the synthetic corpus.

Columns: ``scale``, ``codec``, ``workers``; ``seconds`` wall time of ``build_corpus``; ``frames``, ``videos``,
``boxes``, ``tracklets``, ``identities`` and ``market_images`` from its summary; ``video_hours`` of footage;
``frames_per_s`` = frames / seconds; ``gigabytes`` on disk; ``load_avg`` the 1-minute load average after.
The corpus is deleted afterwards unless ``--keep`` is given.

    python benchmarks/bench_synth.py --scales tiny,demo --codec h264 --workers 2
    python benchmarks/bench_synth.py --scales large --workers 2      # about 20 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: `benchmarks` imports
from benchmarks.common import append_rows, provenance
from reidscale.data.synth import CODECS, SCALES, build_corpus


def folder_bytes(folder: Path) -> int:
    """Total size of the files below ``folder``."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def measure(scale: str, codec: str, workers: int, workdir: Path, keep: bool) -> dict:
    """Build one corpus and return its benchmark row."""
    out = workdir / f"synth_{scale}_{codec}"
    summary = build_corpus(out, scale, seed=0, codec=codec, overwrite=True, workers=workers)
    size = folder_bytes(out)
    if not keep:
        shutil.rmtree(out)
    return {
        "scale": scale,
        "codec": codec,
        "workers": workers,
        "seconds": round(summary.seconds, 2),
        "frames": summary.num_frames,
        "videos": summary.num_videos,
        "boxes": summary.num_boxes,
        "tracklets": summary.num_tracklets,
        "identities": summary.num_identities,
        "market_images": summary.num_market_images,
        "video_hours": round(SCALES[scale].video_hours, 3),
        "frames_per_s": round(summary.num_frames / summary.seconds, 1),
        "gigabytes": round(size / 1e9, 3),
        "load_avg": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="tiny,demo", help=f"comma-separated, from {sorted(SCALES)}")
    parser.add_argument("--codec", default="h264", choices=CODECS)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", default=None, help="where corpora are built (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora")
    parser.add_argument("--output", default="synth", help="results CSV name or path")
    args = parser.parse_args()
    scales = [name.strip() for name in args.scales.split(",") if name.strip()]
    unknown = sorted(set(scales) - set(SCALES))
    if unknown:
        parser.error(f"--scales: unknown scale(s) {unknown}; expected names from {sorted(SCALES)}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_synth_"))
    stamp = provenance()
    rows = []
    for scale in scales:
        row = measure(scale, args.codec, args.workers, workdir, args.keep)
        print(
            f"{scale:<6} {args.codec:<5} workers={args.workers}  {row['seconds']:>8.1f} s  "
            f"{row['frames']:>7} frames ({row['frames_per_s']} /s)  {row['video_hours']} h of video  "
            f"{row['identities']} identities  {row['gigabytes']} GB"
        )
        rows.append(row)
    print(f"rows appended to {append_rows(args.output, rows, stamp)}")


if __name__ == "__main__":
    main()
