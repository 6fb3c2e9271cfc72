"""NVIDIA DALI decoding: GPU ("mixed", NVDEC) for H.264/HEVC/AV1/MPEG-4/VP8/VP9/MJPEG, CPU for VP8/VP9/MJPEG.

Each video is decoded **once, front to back**: its file is fed once to ``fn.experimental.inputs.video``,
which streams it as consecutive sequences of ``sequence_length`` frames, ``sequences_per_run`` sequences per
pipeline run, in presentation order, so frame ``f`` is the ``f``-th frame the stream returns (the numbering
of ``video_probe``). As the sequences arrive, the boxes on their frames are cropped and resized with
``geometry.crop_and_resize_tensor`` on the frames' device (the GPU for "mixed": frames go from DALI into a
CUDA torch tensor by a device-to-device copy, crops never visit the host). Decoding stops after the run
holding the video's last wanted frame. The cost of a video is therefore linear in the frames up to its last
box, whatever the number of boxes or their order; an earlier design that handed DALI the whole file for
every chunk of boxes decoded from the start of the file each time, so its cost grew with the square of
the video's length (``benchmarks/bench_long_video.py`` measures both ends of long clips).

Every frame up to the last wanted one is decoded (frames without boxes included): on NVDEC that is cheap,
on the CPU PyAV, which decodes only from the keyframe before each wanted frame, is usually faster (see
``loader.AUTO_DALI_CODECS``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from reidscale.data.decode.dali_torch import torch_device
from reidscale.data.decode.geometry import crop_and_resize_tensor
from reidscale.data.decode.stats import DALI_BATCH_ERROR, UNSUPPORTED_CODEC, DecodeStats
from reidscale.data.decode.video_index import VideoPlan, plan_video_crops
from reidscale.data.records import CropRecord
from reidscale.data.video_probe import VideoInfo

DALI_CPU_CODECS: frozenset[str] = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS: frozenset[str] = DALI_CPU_CODECS | {"h264", "hevc", "av1", "mpeg4"}
VIDEO_INPUT = "video"  # the name of the pipeline's video input (fed with ``feed_input``)


def dali_codecs(device: str) -> frozenset[str]:
    """FFmpeg codec names DALI decodes on ``device`` ("cpu" or "gpu")."""
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    return DALI_GPU_CODECS if device == "gpu" else DALI_CPU_CODECS


def dali_video_stream_pipeline(
    sequence_length: int, sequences_per_run: int, device: str = "cpu", num_threads: int = 2
):
    """Build the DALI pipeline that streams one fed video: each run returns up to ``sequences_per_run``
    samples, each uint8 [F, H, W, 3] of F ≤ ``sequence_length`` consecutive frames (the last sequence of a
    video may be shorter), on the GPU for device="gpu". Feed a video with
    ``pipe.feed_input(VIDEO_INPUT, [file bytes as uint8 [n]])``; never run it past the video's frames."""
    from nvidia.dali import fn
    from nvidia.dali.pipeline import Pipeline

    dali_codecs(device)
    if sequence_length < 1 or sequences_per_run < 1:
        raise ValueError(
            f"sequence_length and sequences_per_run must be >= 1, got {sequence_length}, {sequences_per_run}"
        )
    pipe = Pipeline(
        batch_size=sequences_per_run,
        num_threads=num_threads,
        device_id=torch.cuda.current_device() if device == "gpu" else None,
        prefetch_queue_depth=1,
    )
    with pipe:
        frames = fn.experimental.inputs.video(
            name=VIDEO_INPUT,
            sequence_length=sequence_length,
            device="mixed" if device == "gpu" else "cpu",
            last_sequence_policy="partial",
        )
        pipe.set_outputs(frames)
    pipe.build()
    return pipe


def _sequences(output, device: str) -> Iterator[torch.Tensor]:
    """The samples of one run as uint8 [F, H, W, 3] torch tensors on ``device`` (the CPU ones share
    DALI's memory until the next run)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    target = torch_device(device)
    for index in range(len(output)):
        if device == "gpu":
            sample = output[index]
            frames = torch.empty(sample.shape(), dtype=torch.uint8, device=target)
            feed_ndarray(sample, frames, cuda_stream=torch.cuda.current_stream(target))
            yield frames
        else:
            yield torch.from_numpy(np.asarray(output.at(index)))


def _crops_of_video(
    plan: VideoPlan,
    out_size: tuple[int, int],
    device: str,
    sequence_length: int,
    sequences_per_run: int,
    num_threads: int,
    stats: DecodeStats,
) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    """(record indices, crops uint8 [H, W, 3]) run by run for one video; RuntimeError from DALI propagates
    after the crops of the runs before it were yielded."""
    pipe = dali_video_stream_pipeline(sequence_length, sequences_per_run, device, num_threads)
    try:
        pipe.feed_input(VIDEO_INPUT, [np.fromfile(plan.video.path, dtype=np.uint8)])
        tasks, position, first_frame = plan.tasks, 0, 0
        while position < len(tasks):
            (output,) = pipe.run()
            indices, crops = [], []
            for frames in _sequences(output, device):
                stats.decoded_frames += frames.shape[0]
                end = first_frame + frames.shape[0]
                while position < len(tasks) and tasks[position].frame < end:
                    task = tasks[position]
                    crops.append(crop_and_resize_tensor(frames[task.frame - first_frame], task.box, out_size))
                    indices.append(task.record_index)
                    position += 1
                first_frame = end
            if len(output) == 0 or (position < len(tasks) and len(output) < sequences_per_run):
                raise RuntimeError(
                    f"{plan.video.path}: DALI's stream ended after {first_frame} frames, before frame "
                    f"{tasks[position].frame}"
                )
            yield indices, crops
    finally:
        del pipe


def crop_records_dali(
    records: Sequence[CropRecord],
    out_size: tuple[int, int],
    device: str = "cpu",
    sequence_length: int = 8,
    sequences_per_run: int = 4,
    num_threads: int = 2,
    stats: DecodeStats | None = None,
    video_cache: dict[str, VideoInfo] | None = None,
    failed_records: list[int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Decode and crop ``records`` with DALI; yields (record indices int64 [n], crops uint8 [n, H, W, 3]).

    One yield per pipeline run with crops (a run holds ``sequences_per_run × sequence_length`` frames of
    one video), crops on the GPU for device="gpu". Videos whose codec DALI cannot decode on ``device`` are
    skipped and counted (``build_crop_loader(backend="auto")`` sends them to PyAV instead). When DALI raises
    on a video (a damaged file, or a stream shorter than its index), the video's records not yet served
    are skipped and counted under ``dali_batch_error``, or, when ``failed_records`` is a list, appended
    there for another decoder to retry; the next video gets a new pipeline.
    """
    stats = DecodeStats() if stats is None else stats
    supported = dali_codecs(device)
    for plan in plan_video_crops(records, stats, video_cache):
        if plan.video.codec not in supported:
            stats.skip_records(UNSUPPORTED_CODEC, plan.video.path, [task.record_index for task in plan.tasks])
            continue
        served: set[int] = set()
        try:
            for indices, crops in _crops_of_video(
                plan, out_size, device, sequence_length, sequences_per_run, num_threads, stats
            ):
                if indices:
                    served.update(indices)
                    stats.crops += len(indices)
                    yield torch.tensor(indices, dtype=torch.int64), torch.stack(crops)
        except RuntimeError:
            failed = [task.record_index for task in plan.tasks if task.record_index not in served]
            if failed_records is None:
                stats.skip_records(DALI_BATCH_ERROR, plan.video.path, failed)
            else:
                failed_records.extend(failed)
