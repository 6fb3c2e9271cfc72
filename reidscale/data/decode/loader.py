"""One loader over both decoding paths: fixed-size batches of (record indices, uint8 crops) tensors."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from reidscale.data.decode.dali_pipeline import DALI_GPU_CODECS, crop_records_dali, dali_codecs
from reidscale.data.decode.dali_torch import torch_device
from reidscale.data.decode.pyav_reader import crop_records_pyav
from reidscale.data.decode.stats import DecodeStats
from reidscale.data.records import CropRecord
from reidscale.data.video_probe import VideoInfo, VideoOpenError, probe_video

BACKENDS: tuple[str, ...] = ("auto", "dali", "pyav")
#: The codecs ``backend="auto"`` sends to DALI, per device: those where DALI was measured faster than PyAV.
#: CPU: none. On 3,000-frame clips with a box on every 5th frame (benchmarks/bench_long_video.py,
#: results/long_video.csv) PyAV served 2.9× (MJPEG) and 1.2× (VP9) more crops per second than DALI's CPU
#: decoder over the whole clip: DALI streams every frame up to the last box, PyAV decodes only from the
#: keyframe before each wanted frame (and never a frame twice). GPU: every codec NVDEC decodes (not yet
#: measured).
AUTO_DALI_CODECS: dict[str, frozenset[str]] = {"cpu": frozenset(), "gpu": DALI_GPU_CODECS}


def dali_available() -> bool:
    """True when nvidia-dali is importable."""
    return (
        importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
    )


def _pyav_batches(
    records: Sequence[CropRecord], out_size: tuple[int, int], stats: DecodeStats, cache: dict[str, VideoInfo]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for record_index, crop in crop_records_pyav(records, out_size, stats, cache):
        yield torch.tensor([record_index], dtype=torch.int64), torch.from_numpy(crop)[None]


class CropLoader:
    """Iterable of (record indices int64 [B], crops uint8 [B, H, W, 3]) on ``device``; see build_crop_loader.

    ``stats`` accumulates over every pass (decoded frames, crops, skipped records by reason, and which
    records: indices into ``records`` once a pass ends).
    """

    def __init__(
        self,
        records: Sequence[CropRecord],
        batch_size: int,
        out_size: tuple[int, int],
        backend: str,
        device: str,
        drop_last: bool,
        dali_options: dict,
    ) -> None:
        self.records, self.batch_size, self.out_size = records, batch_size, out_size
        self.backend, self.device, self.drop_last = backend, device, drop_last
        self.dali_options = dali_options
        self.stats = DecodeStats()
        self.video_cache: dict[str, VideoInfo] = {}

    def _route(self) -> tuple[list[int], list[int]]:
        """Record positions for DALI and for PyAV under the loader's backend."""
        if self.backend == "pyav":
            return [], list(range(len(self.records)))
        if self.backend == "dali":
            return list(range(len(self.records))), []
        supported = AUTO_DALI_CODECS[self.device]
        if not supported:
            return [], list(range(len(self.records)))
        to_dali, to_pyav = [], []
        for position, record in enumerate(self.records):
            if record.source not in self.video_cache:
                try:
                    self.video_cache[record.source] = probe_video(record.source)
                except VideoOpenError:
                    to_pyav.append(position)  # the PyAV path counts it as unreadable
                    continue
            codec = self.video_cache[record.source].codec
            (to_dali if codec in supported else to_pyav).append(position)
        return to_dali, to_pyav

    def _pieces(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        to_dali, to_pyav = self._route()
        if to_dali:
            subset = [self.records[position] for position in to_dali]
            positions = torch.tensor(to_dali, dtype=torch.int64)
            failed: list[int] | None = [] if self.backend == "auto" else None
            dali_crops = crop_records_dali(
                subset,
                self.out_size,
                self.device,
                stats=self.stats,
                video_cache=self.video_cache,
                failed_records=failed,
                **self.dali_options,
            )
            first_skip = len(self.stats.skipped_records)
            try:
                for indices, crops in dali_crops:
                    yield positions[indices], crops
            finally:  # the subset's skipped records, numbered in the subset: back to this loader's records
                self.stats.remap_records(first_skip, to_dali)
            to_pyav = sorted(to_pyav + [to_dali[index] for index in failed or []])
        if to_pyav:
            subset = [self.records[position] for position in to_pyav]
            positions = torch.tensor(to_pyav, dtype=torch.int64)
            first_skip = len(self.stats.skipped_records)
            try:
                for indices, crops in _pyav_batches(subset, self.out_size, self.stats, self.video_cache):
                    yield positions[indices], crops
            finally:
                self.stats.remap_records(first_skip, to_pyav)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        target = torch_device(self.device)
        held_indices: list[torch.Tensor] = []
        held_crops: list[torch.Tensor] = []
        held = 0
        for indices, crops in self._pieces():
            held_indices.append(indices)
            held_crops.append(crops.to(target, non_blocking=True))
            held += len(indices)
            while held >= self.batch_size:
                all_indices, all_crops = torch.cat(held_indices), torch.cat(held_crops)
                yield all_indices[: self.batch_size], all_crops[: self.batch_size]
                held_indices, held_crops = [all_indices[self.batch_size :]], [all_crops[self.batch_size :]]
                held -= self.batch_size
        if held and not self.drop_last:
            yield torch.cat(held_indices), torch.cat(held_crops)


def build_crop_loader(
    records: Sequence[CropRecord],
    batch_size: int,
    out_size: tuple[int, int],
    backend: str = "auto",
    device: str = "cpu",
    drop_last: bool = False,
    sequence_length: int = 8,
    sequences_per_run: int = 4,
    num_threads: int = 2,
) -> CropLoader:
    """Loader yielding (record indices int64 [B], uint8 crops [B, out_h, out_w, 3]) on ``device``.

    backend: "pyav" (CPU, every codec), "dali" (DALI only: VP8/VP9/MJPEG on "cpu", also H.264/HEVC/AV1/
             MPEG-4 on "gpu"; other codecs are skipped and counted), or "auto": DALI for the videos whose
             codec ``AUTO_DALI_CODECS[device]`` lists (measured faster there; none on the CPU) when DALI is
             installed, PyAV for the rest and for the records of any DALI batch that failed (a damaged
             file). Batches come DALI videos first, then PyAV ones; indices say which record each crop
             belongs to.
    device:  "cpu" or "gpu" (DALI decodes with NVDEC and crops on the GPU; PyAV crops are moved there).
    sequence_length / sequences_per_run / num_threads: DALI streams each video as sequences of
             ``sequence_length`` frames, ``sequences_per_run`` per pipeline run, with that many CPU threads.
    The last batch may be smaller unless ``drop_last``. Skipped records are counted in ``loader.stats``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    dali_codecs(device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(out_size) != 2 or min(out_size) < 1:
        raise ValueError(f"out_size must be two positive integers (H, W), got {out_size!r}")
    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("device='gpu' was requested but torch sees no CUDA device")
    if backend == "dali" and not dali_available():
        raise RuntimeError("backend='dali' needs nvidia-dali (pip install nvidia-dali-cuda130)")
    if backend == "auto" and not dali_available():
        backend = "pyav"
    options = {
        "sequence_length": sequence_length,
        "sequences_per_run": sequences_per_run,
        "num_threads": num_threads,
    }
    return CropLoader(records, batch_size, tuple(out_size), backend, device, drop_last, options)


def crops_by_record(loader: CropLoader) -> dict[int, np.ndarray]:
    """Run ``loader`` once and return record index → crop (uint8 [H, W, 3] numpy); for tests and tools."""
    return {
        int(index): crop.cpu().numpy()
        for indices, crops in loader
        for index, crop in zip(indices, crops, strict=True)
    }
