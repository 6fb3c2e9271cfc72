"""Benchmark: the data paths of pre-training, in two suites (``--suites decode,input``).

**decode**: decoding, cropping and multi-crop views straight from videos. Paths: ``dali-cpu`` (DALI's CPU
video decoder: mjpeg, vp9; DALI CPU views), ``pyav`` (PyAV decoder: h264,
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

**input**: what a pre-training run reads every epoch, built once from the same synthetic corpus (mjpeg)
at 256×128: (a) ``cache+torch``, the raw uint8 crop cache with views drawn by ``TorchMultiCrop`` in
DataLoader workers; (b) the JPEG shards of ``reidscale pack`` (quality 95) streamed by ``shards+torch``
(PIL decode + torch views in the workers), ``shards+dali-cpu`` (DALI's CPU decoder and views) or
``shards+dali-gpu`` (nvJPEG and views on the GPU; only with CUDA). Batches come from the identity sampler
(N × 4 images, ``--batch``); views ``2`` (CION's two global views) or ``cion`` (2 global + 8 local).
``source_crops_per_s`` is source images per second over one epoch after a warm-up batch;
``disk_bytes_per_crop`` the input's bytes on disk per crop; ``step_data_wait`` (with ``--step-steps`` > 0,
``cion`` views only) the share of wall time a training loop spends waiting for the next batch when every
batch also runs a ``--step-model`` (ResNet-50) forward and backward over all its views, one pass per view
resolution, on the input's device.

Goals: (b) ≥ 1.5× (a) on the CPU with a twentieth of the disk; on one H100 the ``dali-gpu`` paths must
reach ≥ 2,000 source crops/s with ``cion`` views (20,000 views/s) and a data wait under 5 % of a
ResNet50-IBN step, so that the data never starves CION training.

    python benchmarks/bench_data.py --suites decode --codecs h264,mjpeg,vp9 --paths dali-cpu,pyav,dali-gpu \
        --views none,cion --frames 120 --records 0 --output data
    python benchmarks/bench_data.py --suites input --frames 120 --step-steps 3 --output data
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: `benchmarks` imports
from benchmarks.common import append_rows, choice_list, decode_path_problem, provenance
from reidscale.data.crop_cache import CropCache, build_crop_cache
from reidscale.data.decode.loader import build_crop_loader
from reidscale.data.decode.multicrop_loader import build_view_loader
from reidscale.data.manifests import load_manifest
from reidscale.data.records import CropRecord, Manifest
from reidscale.data.sampler import IdentitySampler
from reidscale.data.shards import CropShards, CropViewLoader, DaliShardViewLoader
from reidscale.data.shards.pack import PackSettings, pack_manifest
from reidscale.data.synth import SCALES, build_corpus
from reidscale.data.views.spec import MultiCropSpec, cion_multicrop
from reidscale.models.registry import create_backbone

SUITES = ("decode", "input")
PATHS = ("dali-cpu", "pyav", "dali-gpu")
INPUT_PATHS = ("cache+torch", "shards+torch", "shards+dali-cpu", "shards+dali-gpu")
VIEWS = ("none", "cion")
INPUT_VIEWS = ("2", "cion")
IMAGES_PER_ID = 4
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
    return row_of(
        input="video",
        path=path,
        codec=codec,
        views=views if views == "none" else f"cion-2+{views_per_crop - 2}",
        records=len(records),
        frames_per_s=round(stats.decoded_frames / seconds, 1),
        crops_per_s=round(stats.crops * views_per_crop / seconds, 1),
        source_crops_per_s=round(stats.crops / seconds, 1),
        seconds=round(seconds, 2),
        threads=threads,
    )


ROW_COLUMNS = (
    "input", "path", "codec", "views", "records", "frames_per_s", "crops_per_s", "source_crops_per_s",
    "seconds", "threads", "workers", "disk_bytes_per_crop", "step_data_wait", "load_avg",
)  # fmt: skip
TABLE_COLUMNS = (
    "path",
    "codec",
    "views",
    "records",
    "source_crops_per_s",
    "disk_bytes_per_crop",
    "step_data_wait",
)


def row_of(**values: object) -> dict:
    """A results row with every column of ``ROW_COLUMNS`` (those a suite does not measure left empty)."""
    unknown = set(values) - set(ROW_COLUMNS)
    if unknown:
        raise ValueError(f"not result columns: {sorted(unknown)}")
    return {column: values.get(column, "") for column in ROW_COLUMNS[:-1]} | {
        "load_avg": round(os.getloadavg()[0], 2)
    }


# --- input suite --------------------------------------------------------------------------------------


def folder_bytes(folder: Path, suffixes: tuple[str, ...]) -> int:
    return sum(
        path.stat().st_size for path in folder.rglob("*") if path.is_file() and path.suffix in suffixes
    )


def build_inputs(workdir: Path, frames: int, threads: int) -> tuple[CropCache, CropShards, dict[str, float]]:
    """The crop cache and the shard set of one synthetic corpus at 256×128, and their bytes per crop."""
    corpus = workdir / f"corpus_mjpeg_{frames}"
    corpus_records(workdir, "mjpeg", frames)
    manifest = load_manifest("video_tracklets", corpus)
    cache = build_crop_cache(manifest.records, workdir / "crop_caches", SOURCE_SIZE, backend="pyav")
    shard_dir = workdir / f"shards_{frames}"
    settings = PackSettings(size=SOURCE_SIZE, decode_backend="pyav", num_threads=threads)
    pack_manifest(
        Manifest(manifest.name, manifest.records), shard_dir, {"kind": "bench"}, settings, log=lambda _: None
    )
    shards = CropShards(shard_dir)
    disk = {
        "cache+torch": folder_bytes(cache.folder, (".npy", ".npz")) / cache.num_rows,
        "shards": folder_bytes(shard_dir, (".tar", ".idx", ".npz")) / len(shards),
    }
    return cache, shards, disk


def input_spec(views: str) -> MultiCropSpec:
    return cion_multicrop(num_local=0 if views == "2" else 8)


def make_stream(
    path: str, cache: CropCache, shards: CropShards, spec: MultiCropSpec, batch: int, threads: int
):
    sampler = IdentitySampler(shards.table["pid"], batch, IMAGES_PER_ID, rank=0, world_size=1, seed=0)
    if path == "cache+torch":
        sampler = IdentitySampler(cache.rows["pid"], batch, IMAGES_PER_ID, rank=0, world_size=1, seed=0)
        return CropViewLoader(cache, sampler, spec, seed=0, num_workers=threads, prefetch=2)
    if path == "shards+torch":
        return CropViewLoader(shards, sampler, spec, seed=0, num_workers=threads, prefetch=2)
    device = "gpu" if path == "shards+dali-gpu" else "cpu"
    return DaliShardViewLoader(shards, sampler, spec, seed=0, device=device, num_threads=threads, prefetch=2)


def synchronized(views: list[torch.Tensor]) -> None:
    if views and views[-1].is_cuda:
        torch.cuda.synchronize()


def stream_rate(stream) -> tuple[int, float]:
    """(source images, seconds) of one epoch of ``stream`` after its first batch (the warm-up)."""
    stream.set_epoch(0)
    batches: Iterator[dict] = iter(stream)
    synchronized(next(batches)["views"])
    images, start = 0, time.perf_counter()
    for batch in batches:
        synchronized(batch["views"])
        images += len(batch["rows"])
    return images, time.perf_counter() - start


def step_data_wait(stream, model_name: str, steps: int) -> float:
    """Share of wall time spent waiting for batches over ``steps`` training steps (after one warm-up step):
    each step a forward and backward of ``model_name`` on every view, one pass per resolution group."""
    device = (
        torch.device("cuda") if isinstance(stream, DaliShardViewLoader) and stream.device == "gpu" else None
    )
    device = device or (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    model = create_backbone(model_name).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    stream.set_epoch(0)
    batches = iter(stream)
    waited = total = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            raise SystemExit(f"--step-steps {steps}: the epoch has fewer batches; lower it or raise --frames")
        got = time.perf_counter()
        by_size: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for view in batch["views"]:
            by_size.setdefault(tuple(view.shape[1:]), []).append(view.to(device, non_blocking=True))
        loss = sum(model(torch.cat(group)).pow(2).mean() for group in by_size.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step builds pipelines, workers and kernels
            waited += got - started
            total += time.perf_counter() - started
    return waited / total


def measure_input(path, views, cache, shards, disk, args) -> dict:
    spec = input_spec(views)
    images, seconds = stream_rate(make_stream(path, cache, shards, spec, args.batch, args.threads))
    wait = ""
    if args.step_steps and views == "cion":
        stream = make_stream(path, cache, shards, spec, args.batch, args.threads)
        wait = round(step_data_wait(stream, args.step_model, args.step_steps), 4)
    rows = cache.num_rows if path == "cache+torch" else len(shards)
    return row_of(
        input="crop_cache" if path == "cache+torch" else "shards",
        path=path,
        codec="raw" if path == "cache+torch" else "jpeg-q95",
        views="2" if views == "2" else f"cion-2+{spec.num_views - 2}",
        records=rows,
        crops_per_s=round(images * spec.num_views / seconds, 1),
        source_crops_per_s=round(images / seconds, 1),
        seconds=round(seconds, 2),
        threads=args.threads if "dali" in path else "",
        workers=args.threads if "torch" in path else 0,
        disk_bytes_per_crop=round(disk["cache+torch" if path == "cache+torch" else "shards"]),
        step_data_wait=wait,
    )


def input_path_problem(path: str) -> str | None:
    if "dali" in path:
        return decode_path_problem(path.split("+", 1)[1])
    return None


def print_row(row: dict | None) -> None:
    """One table line (the header for None)."""
    cells = TABLE_COLUMNS if row is None else [row[column] for column in TABLE_COLUMNS]
    print(" ".join(f"{cell!s:>18}" for cell in cells), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", default="decode", help=f"comma-separated, of {SUITES}")
    parser.add_argument("--codecs", default=",".join(CODECS), help="decode suite")
    parser.add_argument("--paths", default=",".join(PATHS), help="decode suite")
    parser.add_argument("--views", default=",".join(VIEWS), help="decode suite")
    parser.add_argument("--input-paths", default=",".join(INPUT_PATHS), help="input suite")
    parser.add_argument("--input-views", default=",".join(INPUT_VIEWS), help="input suite")
    parser.add_argument("--batch", type=int, default=32, help="input suite: images per batch (N x 4)")
    parser.add_argument("--step-steps", type=int, default=0, help="input suite: timed training steps")
    parser.add_argument("--step-model", default="resnet50", help="input suite: backbone of the steps")
    parser.add_argument("--frames", type=int, default=120, help="frames per synthetic video (6 videos)")
    parser.add_argument("--records", type=int, default=0, help="records per case (0: the whole corpus)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--workdir", default=None, help="where corpora are built (default: a temp dir)")
    parser.add_argument("--output", default="data", help="results CSV name or path")
    args = parser.parse_args(argv)
    suites = choice_list(parser, "--suites", args.suites, SUITES)
    codecs = choice_list(parser, "--codecs", args.codecs, CODECS)
    paths = choice_list(parser, "--paths", args.paths, PATHS)
    views = choice_list(parser, "--views", args.views, VIEWS)
    input_paths = choice_list(parser, "--input-paths", args.input_paths, INPUT_PATHS)
    input_views = choice_list(parser, "--input-views", args.input_views, INPUT_VIEWS)
    if args.frames < 2 or args.threads < 1 or args.records < 0:
        raise SystemExit(
            f"--frames must be >= 2, --threads >= 1, --records >= 0; got {args.frames}, {args.threads}, "
            f"{args.records}"
        )
    if args.batch < IMAGES_PER_ID or args.batch % IMAGES_PER_ID or args.step_steps < 0:
        raise SystemExit(f"--batch must be a multiple of {IMAGES_PER_ID}, --step-steps >= 0")
    with tempfile.TemporaryDirectory() as temp:
        workdir = Path(args.workdir or temp)
        rows = []
        print_row(None)
        if "input" in suites:
            cache, shards, disk = build_inputs(workdir, args.frames, args.threads)
            for path in input_paths:
                reason = input_path_problem(path)
                if reason:
                    print(f"skip {path}: {reason}")
                    continue
                for view in input_views:
                    rows.append(measure_input(path, view, cache, shards, disk, args))
                    print_row(rows[-1])
        for codec in codecs if "decode" in suites else ():
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
