"""NVIDIA DALI decoding: GPU ("mixed", NVDEC) for H.264/HEVC/AV1/MPEG-4/VP8/VP9/MJPEG, CPU for VP8/VP9/MJPEG.

How records reach DALI: the host groups a video's crop records (sorted by frame) into *chunks* of at
most ``chunk_len`` records. One DALI sample is one chunk: the encoded file bytes, the distinct frames
the chunk needs (``frames=`` of ``fn.decoders.video``, each decoded once), the slot → frame order
(``fn.sequence_rearrange``, so several boxes on one frame share the decode) and one affine matrix per
slot (``fn.warp_affine`` with ``fn.per_frame``: crop + resize in one resampling, see ``geometry``).
A sample comes out as uint8 [chunk_len, H_out, W_out, 3]; padding slots (record index −1) repeat the
chunk's last record and are dropped on the PyTorch side. The graph is the same on both devices; only the
decoder's device changes ("cpu" or "mixed"), and on a GPU everything after it runs on the GPU and lands
in a CUDA torch tensor by a device-to-device copy (no host round trip).

Cost note: each sample hands DALI the whole file, which it parses and indexes again, so the chunk length
should cover many records of a video (or long videos should be cut into segments upstream).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from reidscale.data.decode.dali_torch import dali_to_torch
from reidscale.data.decode.geometry import crop_to_output_affine
from reidscale.data.decode.stats import DALI_BATCH_ERROR, UNSUPPORTED_CODEC, DecodeStats
from reidscale.data.decode.video_index import VideoPlan, plan_video_crops
from reidscale.data.records import CropRecord
from reidscale.data.video_probe import VideoInfo

DALI_CPU_CODECS: frozenset[str] = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS: frozenset[str] = DALI_CPU_CODECS | {"h264", "hevc", "av1", "mpeg4"}


def dali_codecs(device: str) -> frozenset[str]:
    """FFmpeg codec names DALI decodes on ``device`` ("cpu" or "gpu")."""
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    return DALI_GPU_CODECS if device == "gpu" else DALI_CPU_CODECS


@dataclass(frozen=True)
class DaliChunk:
    """One DALI sample. frames int32 [U] ascending; order int32 [L] (slot → position in frames);
    affines float32 [L, 2, 3] (output → frame coordinates); record_indices int64 [L], −1 = padding."""

    path: str
    frames: np.ndarray
    order: np.ndarray
    affines: np.ndarray
    record_indices: np.ndarray


def make_chunks(plans: Sequence[VideoPlan], out_size: tuple[int, int], chunk_len: int) -> list[DaliChunk]:
    """Split every plan's tasks (already sorted by frame) into chunks of ``chunk_len`` slots."""
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
    chunks = []
    for plan in plans:
        for start in range(0, len(plan.tasks), chunk_len):
            tasks = list(plan.tasks[start : start + chunk_len])
            padding = chunk_len - len(tasks)
            frames = np.unique([task.frame for task in tasks]).astype(np.int32)
            order = np.searchsorted(frames, [task.frame for task in tasks]).astype(np.int32)
            affines = np.stack([crop_to_output_affine(task.box, out_size) for task in tasks])
            indices = np.array([task.record_index for task in tasks] + [-1] * padding, dtype=np.int64)
            chunks.append(
                DaliChunk(
                    path=plan.video.path,
                    frames=frames,
                    order=np.concatenate([order, np.repeat(order[-1:], padding)]),
                    affines=np.concatenate([affines, np.repeat(affines[-1:], padding, axis=0)]),
                    record_indices=indices,
                )
            )
    return chunks


class _ChunkFeeder:
    """External-source callable: batch ``first_batch + iteration`` of the chunk list, file bytes cached."""

    def __init__(self, batches: Sequence[Sequence[DaliChunk]], first_batch: int) -> None:
        self._batches, self._first_batch = batches, first_batch
        self._cached_path, self._cached_bytes = "", np.empty(0, dtype=np.uint8)

    def _file_bytes(self, path: str) -> np.ndarray:
        if path != self._cached_path:
            self._cached_path, self._cached_bytes = path, np.fromfile(path, dtype=np.uint8)
        return self._cached_bytes

    def __call__(self, batch_info) -> tuple[list[np.ndarray], ...]:
        batch_number = self._first_batch + batch_info.iteration
        if batch_number >= len(self._batches):
            raise StopIteration
        chunks = self._batches[batch_number]
        return (
            [self._file_bytes(chunk.path) for chunk in chunks],
            [chunk.frames for chunk in chunks],
            [chunk.order for chunk in chunks],
            [chunk.affines for chunk in chunks],
            [chunk.record_indices for chunk in chunks],
        )


def dali_video_crop_pipeline(
    source,
    chunks_per_batch: int,
    out_size: tuple[int, int],
    device: str = "cpu",
    num_threads: int = 2,
    prefetch_queue_depth: int = 2,
):
    """Build (not yet run) the DALI pipeline: decode → per-slot frame order → per-slot crop+resize.

    source: external-source callable taking DALI's BatchInfo and returning five lists of per-chunk
            arrays (file bytes uint8, frames int32 [U], order int32 [L], affines float32 [L, 2, 3],
            record indices int64 [L]); raising StopIteration ends the data.
    Outputs per sample: crops uint8 [L, out_h, out_w, 3] (on the GPU for device="gpu"), record indices
    int64 [L] (CPU).
    """
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    dali_codecs(device)
    device_id = torch.cuda.current_device() if device == "gpu" else None
    pipe = Pipeline(
        batch_size=chunks_per_batch,
        num_threads=num_threads,
        device_id=device_id,
        prefetch_queue_depth=prefetch_queue_depth,
    )
    with pipe:
        encoded, frames, order, affines, indices = fn.external_source(
            source=source,
            num_outputs=5,
            batch=True,
            batch_info=True,
            dtype=[types.UINT8, types.INT32, types.INT32, types.FLOAT, types.INT64],
        )
        video = fn.decoders.video(encoded, device="mixed" if device == "gpu" else "cpu", frames=frames)
        slots = fn.sequence_rearrange(video, new_order=order)
        crops = fn.warp_affine(
            slots,
            matrix=fn.per_frame(affines),
            size=list(out_size),
            interp_type=types.INTERP_LINEAR,
            inverse_map=True,
        )
        pipe.set_outputs(crops, indices)
    return pipe


def _to_torch(crops, indices, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten a pipeline batch to (record indices int64 [n], crops uint8 [n, H, W, 3]), padding dropped."""
    out = dali_to_torch(crops, torch.uint8, device)
    record_indices = torch.from_numpy(np.array(indices.as_tensor())).reshape(-1)
    keep = record_indices >= 0
    flat = out.reshape(-1, *out.shape[2:])
    return record_indices[keep], flat[keep.to(flat.device)]


def crop_records_dali(
    records: Sequence[CropRecord],
    out_size: tuple[int, int],
    device: str = "cpu",
    chunk_len: int = 16,
    chunks_per_batch: int = 8,
    num_threads: int = 2,
    stats: DecodeStats | None = None,
    video_cache: dict[str, VideoInfo] | None = None,
    failed_records: list[int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Decode and crop ``records`` with DALI; yields (record indices int64 [n], crops uint8 [n, H, W, 3]).

    One yield per pipeline batch (``chunks_per_batch`` chunks, n ≤ chunks_per_batch·chunk_len), crops on
    the GPU for device="gpu". Videos whose codec DALI cannot decode on ``device`` are skipped and counted
    (``build_crop_loader(backend="auto")`` sends them to PyAV instead). A batch on which DALI raises is
    skipped and counted (its records under ``dali_batch_error``), or, when ``failed_records`` is a list,
    its record indices are appended there for another decoder to retry; the pipeline is rebuilt after it.
    """
    stats = DecodeStats() if stats is None else stats
    supported = dali_codecs(device)
    plans = []
    for plan in plan_video_crops(records, stats, video_cache):
        if plan.video.codec in supported:
            plans.append(plan)
        else:
            stats.skip_records(UNSUPPORTED_CODEC, plan.video.path, [task.record_index for task in plan.tasks])
    chunks = make_chunks(plans, out_size, chunk_len)
    batches = [chunks[start : start + chunks_per_batch] for start in range(0, len(chunks), chunks_per_batch)]
    next_batch = 0
    while next_batch < len(batches):
        pipe = dali_video_crop_pipeline(
            _ChunkFeeder(batches, next_batch), chunks_per_batch, out_size, device, num_threads
        )
        try:
            pipe.build()
            while next_batch < len(batches):
                crops, indices = pipe.run()
                record_indices, crop_tensor = _to_torch(crops, indices, device)
                stats.decoded_frames += sum(len(chunk.frames) for chunk in batches[next_batch])
                stats.crops += len(record_indices)
                next_batch += 1
                yield record_indices, crop_tensor
        except StopIteration:
            break
        except RuntimeError:
            failed = [
                int(index) for chunk in batches[next_batch] for index in chunk.record_indices if index >= 0
            ]
            if failed_records is None:
                for chunk in batches[next_batch]:
                    indices = [int(index) for index in chunk.record_indices if index >= 0]
                    stats.skip_records(DALI_BATCH_ERROR, chunk.path, indices)
            else:
                failed_records.extend(failed)
            next_batch += 1
        finally:
            del pipe
