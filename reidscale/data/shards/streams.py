"""Choosing the view stream of a shard set: ``build_view_stream(..., backend="auto")``.

Two streams yield the same batches (``stream.CropViewLoader``: PIL decoding and torch views in DataLoader
workers; ``dali_stream.DaliShardViewLoader``: DALI decoding and views, on the CPU or the GPU). ``auto``
takes the one measured faster where it runs (``benchmarks/bench_data.py``, input suite): torch workers on
the CPU (on 2 cores DALI's CPU decoder and operators served 8 % fewer images per second with CION's 2 + 8
views, 6 % fewer with 2 views), DALI on a GPU (nvJPEG / the hardware JPEG decoder and views on the device,
no host round trip) when DALI is installed.
"""

from __future__ import annotations

from reidscale.data.crop_source import CropSource
from reidscale.data.decode.loader import dali_available
from reidscale.data.sampler import IdentitySampler
from reidscale.data.shards.dali_stream import DaliShardViewLoader
from reidscale.data.shards.reader import CropShards, ShardCrops
from reidscale.data.shards.stream import CropViewLoader
from reidscale.data.views.spec import MultiCropSpec

STREAM_BACKENDS: tuple[str, ...] = ("auto", "torch", "dali")


def resolve_stream_backend(backend: str, device: str) -> str:
    """ "torch" or "dali" for ``backend`` on ``device`` ("cpu" or "gpu"); ValueError / RuntimeError when the
    choice cannot run (unknown name, DALI missing, torch views asked for on the GPU)."""
    if backend not in STREAM_BACKENDS:
        raise ValueError(f"stream backend must be one of {STREAM_BACKENDS}, got {backend!r}")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if backend == "auto":
        return "dali" if device == "gpu" and dali_available() else "torch"
    if backend == "dali" and not dali_available():
        raise RuntimeError("the dali stream needs nvidia-dali (pip install nvidia-dali-cuda130)")
    return backend


def build_view_stream(
    crops: CropShards | CropSource,
    sampler: IdentitySampler,
    spec: MultiCropSpec,
    backend: str = "auto",
    device: str = "cpu",
    seed: int = 0,
    workers: int = 2,
    prefetch: int = 2,
    unreadable: str = "leave_out",
) -> CropViewLoader | DaliShardViewLoader:
    """This rank's stream of identity batches of ``spec``'s views from ``crops``.

    crops:      a shard set, chosen rows of one (``ShardCrops``), or any other ``CropSource`` (a crop cache,
                which only the torch stream reads: DALI decodes JPEGs)
    backend:    "torch", "dali" or "auto" (see the module doc)
    device:     where DALI decodes and draws the views ("cpu" or "gpu"); the torch stream draws them on the
                CPU whatever ``device`` is (move them with ``.to``), so "gpu" with "torch" still works
    workers:    DataLoader workers (torch) or DALI CPU threads (dali)
    prefetch:   batches prepared ahead (per worker for torch)
    unreadable: "leave_out" or "mean_colour" (``stream.UNREADABLE_POLICIES``)
    """
    jpegs = isinstance(crops, (CropShards, ShardCrops))
    if resolve_stream_backend(backend, device) == "dali" and jpegs:
        return DaliShardViewLoader(crops, sampler, spec, seed, device, max(1, workers), prefetch, unreadable)
    return CropViewLoader(crops, sampler, spec, seed, workers, prefetch, unreadable)
