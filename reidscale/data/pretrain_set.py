"""The pre-training image set of selective contrastive learning (docs/methods.md): N fixed, indexed crops.

The method keeps one memory-bank row per training image, so its training set is a fixed list of person
crops, read from disk every epoch::

    manifest (load_manifest) ──► select_records (stride + cap per tracklet)
      ──► crop cache (uint8 [N, H, W, 3] on disk, decoded once)
      ──► PretrainImageSet (item i = bank row i) + pretrain_batch_sampler (a permutation per epoch, per rank)

    shard set (reidscale pack: JPEG crops) ──► select_positions (the same selection over its rows)
      ──► ShardCrops (JPEG decoded and resized when read) ──► PretrainImageSet + pretrain_batch_sampler

``build_pretrain_set(config, image_size, batch_per_rank, seed)`` ties it together; use the pair as
``DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers)`` and call
``sampler.set_epoch(e)`` before each epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from reidscale.data.crop_cache import CropProgressCallback, build_crop_cache
from reidscale.data.crop_source import CropSource
from reidscale.data.decode.loader import BACKENDS
from reidscale.data.manifests import MANIFEST_KINDS, load_manifest, manifest_options
from reidscale.data.normalize import normalize_image
from reidscale.data.records import CropRecord, Manifest
from reidscale.data.sampler import IdentitySampler
from reidscale.data.views.spec import flip_only
from reidscale.data.views.torch_views import flip_view, sample_flip
from reidscale.utils.dist import get_rank, get_world_size
from reidscale.utils.options import option

DECODE_DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")
VIEW_BACKENDS: tuple[str, ...] = ("auto", "torch", "dali")
#: what pre-training reads: a manifest (decoded once into a crop cache) or a shard set (``reidscale pack``)
PRETRAIN_SOURCES: tuple[str, ...] = (*MANIFEST_KINDS, "shards")
logger = logging.getLogger(__name__)


@dataclass
class PretrainDataConfig:
    """The fixed image set of unsupervised pre-training: source, subsampling, crop size, decoding, cache."""

    source: str = option(
        "video_tracklets",
        "manifest kind to read (reidscale.data.manifests.MANIFEST_KINDS) or shards (a reidscale pack folder)",
    )
    path: str = option(
        "data/synth_demo", "the corpus / folder / file the manifest reader reads, or the shards"
    )
    manifest_options: dict[str, Any] = option(
        doc="keyword options of the manifest reader (e.g. strict: false)", factory=dict
    )
    frame_stride: int = option(
        4, "keep every k-th box of each tracklet in frame order (1 = all; consecutive frames are near-copies)"
    )
    max_per_tracklet: int = option(
        0, "at most this many boxes per tracklet after the stride, spread evenly over it (0 = no cap)"
    )
    cache_dir: str | None = option(
        None,
        "folder of the decoded-crop caches; null = <run.output_dir>/crop_caches (never the corpus folder)",
    )
    decode_backend: Literal["auto", "dali", "pyav"] = option(
        "auto", "video decoding: auto (PyAV on the CPU, DALI for NVDEC's codecs on a GPU), dali or pyav"
    )
    decode_device: Literal["auto", "cpu", "gpu"] | None = option(
        None, "cpu, gpu, or null/auto = gpu when torch sees CUDA"
    )
    flip_prob: float = option(
        0.5, "probability of a horizontal flip per training image (the only augmentation)"
    )
    num_workers: int = option(
        0, "DataLoader worker processes reading the crops and drawing the views (torch stream)"
    )
    view_backend: Literal["auto", "torch", "dali"] = option(
        "auto",
        "how training images are read and flipped: torch (DataLoader workers, CPU), dali (shard sets only: "
        "JPEGs decoded and flipped by DALI on the decode device, nvJPEG on a GPU) or auto (dali for a shard "
        "set on a GPU when DALI is installed, else torch)",
    )
    prefetch: int = option(2, "batches prepared ahead (per worker for torch, by the pipeline for dali)")

    def __post_init__(self) -> None:
        if self.source not in PRETRAIN_SOURCES:
            raise ValueError(f"pretrain_data.source must be one of {PRETRAIN_SOURCES}, got {self.source!r}")
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"pretrain_data.path must be a non-empty path, got {self.path!r}")
        if not isinstance(self.manifest_options, dict):
            raise ValueError(
                f"pretrain_data.manifest_options must be a mapping, got {self.manifest_options!r}"
            )
        known = manifest_options(self.source) if self.source in MANIFEST_KINDS else ()
        unknown = sorted(set(self.manifest_options) - set(known))
        if unknown:
            raise ValueError(
                f"pretrain_data.manifest_options has {unknown}, not options of the {self.source!r} reader "
                f"(it takes {list(known)})"
            )
        minimum = {"frame_stride": 1, "max_per_tracklet": 0, "num_workers": 0, "prefetch": 1}
        for name, least in minimum.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"pretrain_data.{name} must be an integer >= {least}, got {value!r}")
        if self.cache_dir is not None and (not isinstance(self.cache_dir, str) or not self.cache_dir):
            raise ValueError(
                f"pretrain_data.cache_dir must be a non-empty path or null, got {self.cache_dir!r}"
            )
        if self.decode_backend not in BACKENDS:
            raise ValueError(
                f"pretrain_data.decode_backend must be one of {BACKENDS}, got {self.decode_backend!r}"
            )
        if self.view_backend not in VIEW_BACKENDS:
            raise ValueError(
                f"pretrain_data.view_backend must be one of {VIEW_BACKENDS}, got {self.view_backend!r}"
            )
        if self.view_backend == "dali" and self.source != "shards":
            raise ValueError(
                "pretrain_data.view_backend dali reads shard sets only (source: shards; pack a corpus with "
                f"`reidscale pack`), got source {self.source!r}"
            )
        if self.decode_device is not None and self.decode_device not in DECODE_DEVICES:
            raise ValueError(
                f"pretrain_data.decode_device must be one of {DECODE_DEVICES} or null, "
                f"got {self.decode_device!r}"
            )
        if isinstance(self.flip_prob, bool) or not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(
                f"pretrain_data.flip_prob must be a probability in [0, 1], got {self.flip_prob!r}"
            )


def spread_evenly(count: int, keep: int) -> list[int]:
    """``keep`` of ``count`` positions, one at the centre of each of ``keep`` equal slices:
    ``floor((2j + 1) · count / (2 · keep))`` for j = 0..keep−1 (all of them when keep >= count)."""
    if keep >= count:
        return list(range(count))
    return [(2 * j + 1) * count // (2 * keep) for j in range(keep)]


def select_records(manifest: Manifest, frame_stride: int, max_per_tracklet: int) -> list[CropRecord]:
    """Deterministic per-tracklet subsampling of ``manifest.records``, kept in manifest order
    (``select_positions``)."""
    positions = select_positions(manifest.records, frame_stride, max_per_tracklet)
    return [manifest.records[position] for position in positions]


def select_positions(records: Sequence[CropRecord], frame_stride: int, max_per_tracklet: int) -> list[int]:
    """``select_rows`` over a list of records (their tracklet, video, camera, pid and frame)."""
    videos = np.unique(np.array([record.video for record in records], dtype=str), return_inverse=True)[1]
    rows = select_rows(
        tracklet=np.array([record.tracklet for record in records], dtype=np.int64),
        video=videos.astype(np.int64),
        camera=np.array([record.camera for record in records], dtype=np.int64),
        pid=np.array([record.pid for record in records], dtype=np.int64),
        frame=np.array([record.frame for record in records], dtype=np.int64),
        frame_stride=frame_stride,
        max_per_tracklet=max_per_tracklet,
    )
    return rows.tolist()


def select_rows(
    tracklet: np.ndarray,
    video: np.ndarray,
    camera: np.ndarray,
    pid: np.ndarray,
    frame: np.ndarray,
    frame_stride: int,
    max_per_tracklet: int,
) -> np.ndarray:
    """The rows that per-tracklet subsampling keeps, ascending (int64 [M]), from per-row int arrays [N]
    (``video`` as any integer code of the video): vectorised, for tables of millions of rows.

    Each tracklet's rows (by tracklet number, or by (video, camera, pid) when ``tracklet == -1``, as in
    image-folder manifests) are ordered by (frame, row); the 1st, (1+k)th, (1+2k)th … are kept
    (k = ``frame_stride``), then, when more than ``max_per_tracklet`` > 0 remain, ``spread_evenly`` picks
    that many of them.
    """
    if frame_stride < 1:
        raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
    if max_per_tracklet < 0:
        raise ValueError(f"max_per_tracklet must be >= 0 (0 = no cap), got {max_per_tracklet}")
    count = len(frame)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    group = np.asarray(tracklet, dtype=np.int64).copy()
    loose = group < 0
    if loose.any():  # rows without a tracklet: one group per (video, camera, pid), numbered after them
        keys = np.stack([video[loose], camera[loose], pid[loose]], axis=1)
        group[loose] = (
            int(group.max(initial=-1)) + 1 + np.unique(keys, axis=0, return_inverse=True)[1].ravel()
        )
    rows = np.arange(count, dtype=np.int64)
    order = np.lexsort((rows, np.asarray(frame, dtype=np.int64), group))
    sorted_group = group[order]
    first = np.r_[True, sorted_group[1:] != sorted_group[:-1]]
    group_start = np.maximum.accumulate(np.where(first, rows, 0))
    kept = order[(rows - group_start) % frame_stride == 0]  # the stride, within each group in frame order
    if max_per_tracklet:
        kept_group = group[kept]
        starts = np.flatnonzero(np.r_[True, kept_group[1:] != kept_group[:-1]])
        sizes = np.diff(np.r_[starts, len(kept)])
        capped = sizes > max_per_tracklet
        picks = np.ones(len(kept), dtype=bool)
        picks[np.repeat(capped, sizes)] = False
        j = np.tile(np.arange(max_per_tracklet), int(capped.sum()))
        size_of = np.repeat(sizes[capped], max_per_tracklet)
        picks[
            np.repeat(starts[capped], max_per_tracklet) + (2 * j + 1) * size_of // (2 * max_per_tracklet)
        ] = True
        kept = kept[picks]
    return np.sort(kept)


class PretrainImageSet(Dataset):
    """The crops of a ``CropSource`` as training images; item ``i`` (= memory-bank row i) is

    ``{"image": float32 [3, H, W] ImageNet-normalised, flipped with flip_prob, "index": i, "camid": int,
    "pid": int}`` (pid = tracklet / pseudo identity, reported only). The augmentation is the views' ``flip``
    recipe (``view_spec`` = ``flip_only`` at the cache's size): ``sample_flip`` draws once from torch's global
    generator, which the DataLoader seeds per worker (no draw when ``flip_prob`` is 0 or ``augment`` is
    off). ``test_view(i)`` = the image unflipped.

    ``summary`` (one line), ``skipped`` ({"reader": {reason: n}, "decode": {reason: n}}) and
    ``skipped_entries`` (``{"stage", "file", "record", "reason"}`` per skipped item: stage "reader" for the
    manifest reader, record = line of a tracklet file / index of a JSON entry / −1 for a whole file; stage
    "decode" for the decoders, record = position in the selected records) are filled by
    ``build_pretrain_set``.
    """

    def __init__(self, cache: CropSource, flip_prob: float = 0.5, augment: bool = True) -> None:
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.cache, self.flip_prob, self.augment = cache, float(flip_prob), bool(augment)
        self.view_spec = flip_only((cache.height, cache.width), flip_p=self.flip_prob)
        self.summary = ""
        self.skipped: dict[str, dict[str, int]] = {"reader": {}, "decode": {}}
        self.skipped_entries: list[dict[str, str | int]] = []

    def __len__(self) -> int:
        return self.cache.num_rows

    @property
    def num_images(self) -> int:
        return self.cache.num_rows

    @property
    def cameras(self) -> torch.Tensor:
        """int64 [N]: camera of each image (-1 = unknown)."""
        return torch.from_numpy(self.cache.rows["camera"])

    @property
    def pids(self) -> torch.Tensor:
        """int64 [N]: tracklet / pseudo identity of each image (not a training label)."""
        return torch.from_numpy(self.cache.rows["pid"])

    def without_augmentation(self) -> PretrainImageSet:
        """The same images, never flipped (e.g. for the memory-bank initialisation pass)."""
        other = PretrainImageSet(self.cache, self.flip_prob, augment=False)
        other.summary = self.summary
        other.skipped, other.skipped_entries = self.skipped, self.skipped_entries
        return other

    def test_view(self, index: int) -> torch.Tensor:
        """float32 [3, H, W]: image ``index`` normalised, not flipped. A crop the source cannot read (a
        damaged JPEG in a shard set) is replaced by the mean colour (zeros after normalisation) and named in
        a warning: a long run goes on, and its batches keep their size, which the memory banks' exchange
        between ranks needs (a row cannot simply be left out as the view streams do)."""
        from reidscale.data.shards.layout import ShardError

        try:
            crop = torch.from_numpy(self.cache.crop(index))
        except ShardError as err:
            logger.warning("pretrain set: image %d replaced by the mean colour: %s", index, err)
            return torch.zeros(3, self.cache.height, self.cache.width)
        return normalize_image(crop.permute(2, 0, 1))

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.test_view(index)
        if self.augment and self.flip_prob > 0 and sample_flip(self.view_spec.groups[0]):
            image = flip_view(image)
        rows = self.cache.rows
        return {
            "image": image,
            "index": index,
            "camid": int(rows["camera"][index]),
            "pid": int(rows["pid"][index]),
        }


def pretrain_batch_sampler(
    num_images: int,
    batch_per_rank: int,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
) -> IdentitySampler:
    """Per epoch, a random permutation of 0..num_images−1 cut into batches of ``batch_per_rank``, global
    batches dealt to ranks in turn: every index at most once per epoch, the ``num_images mod (batch ×
    world)`` remainder dropped, every rank the same number of batches; ``set_epoch`` / ``state_dict`` /
    ``load_state_dict`` resume exactly. It is the identity sampler with one identity per image and K = 1.
    """
    world = get_world_size() if world_size is None else int(world_size)
    if batch_per_rank < 1:
        raise ValueError(f"batch_per_rank must be >= 1, got {batch_per_rank}")
    if world < 1:
        raise ValueError(f"world_size must be >= 1, got {world}")
    if num_images < batch_per_rank * world:
        raise ValueError(
            f"num_images={num_images} is smaller than one global batch "
            f"({batch_per_rank} per rank × {world} ranks)"
        )
    pids = np.arange(num_images, dtype=np.int64)
    return IdentitySampler(
        pids, batch_per_rank, 1, rank=get_rank() if rank is None else rank, world_size=world, seed=seed
    )


def resolve_cache_dir(config: PretrainDataConfig, default: str | Path | None = None) -> Path:
    """``config.cache_dir``, else ``default`` (a training run passes ``<run.output_dir>/crop_caches``):
    never a folder inside the corpus, which may be read-only or shared. ValueError when neither is set."""
    if config.cache_dir is not None:
        return Path(config.cache_dir)
    if default is None:
        raise ValueError("pretrain_data.cache_dir is null and no default folder was given: set it")
    return Path(default)


def resolve_decode_device(device: str | None) -> str:
    """ "gpu" or "cpu": None / "auto" = "gpu" when torch sees CUDA."""
    if device in (None, "auto"):
        return "gpu" if torch.cuda.is_available() else "cpu"
    return device


def build_pretrain_set(
    config: PretrainDataConfig,
    image_size: tuple[int, int],
    batch_per_rank: int,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    progress: CropProgressCallback | None = None,
    cache_root: str | Path | None = None,
) -> tuple[PretrainImageSet, IdentitySampler]:
    """The pre-training images at ``image_size`` (height, width: the training input size,
    ``model.img_size``) and this rank's sampler.

    From a manifest: read it, select the records, build or reuse the crop cache (in
    ``pretrain_data.cache_dir``, else ``cache_root``). From a shard set
    (``source: shards``): open it, select its rows the same way, decode each JPEG when it is read.
    ``dataset.summary`` holds (and the log gets) one line of what was read, selected, skipped and cached;
    ``dataset.skipped`` the skip counts by stage and reason ("reader" and "decode", or "pack"),
    ``dataset.skipped_entries`` every skipped item named."""
    if config.source == "shards":
        dataset = _shard_image_set(config, image_size)
    else:
        dataset = _cached_image_set(config, image_size, progress, cache_root)
    sampler = pretrain_batch_sampler(dataset.num_images, batch_per_rank, seed, rank, world_size)
    dataset.summary += f"; {len(sampler)} batches of {batch_per_rank} per rank"
    logger.info(dataset.summary)
    return dataset, sampler


def _shard_image_set(config: PretrainDataConfig, image_size: tuple[int, int]) -> PretrainImageSet:
    """The selected rows of the shard set at ``config.path``, resized to ``image_size`` when read."""
    from reidscale.data.shards import CropShards, ShardCrops

    shards = CropShards(config.path)
    table = shards.table
    columns = {name: table[name].astype(np.int64) for name in ("tracklet", "video", "camera", "pid", "frame")}
    rows = select_rows(**columns, frame_stride=config.frame_stride, max_per_tracklet=config.max_per_tracklet)
    if not len(rows):
        raise ValueError(f"pretrain_data: the shard set at {config.path!r} stores no crops")
    dataset = PretrainImageSet(ShardCrops(shards, np.asarray(rows), image_size), config.flip_prob)
    skipped = shards.skipped()
    counts: dict[str, int] = {}
    for entry in skipped:
        counts[entry.reason] = counts.get(entry.reason, 0) + 1
    dataset.summary = (
        f"pretrain set: shards at {config.path}: {len(shards)} crops of {shards.info.total_records} records "
        f"({len(skipped)} left out when packed), {len(rows)} selected (stride {config.frame_stride}, cap "
        f"{config.max_per_tracklet or 'none'}), decoded to {image_size[0]}x{image_size[1]} when read"
    )
    dataset.skipped = {"pack": counts}
    dataset.skipped_entries = [{"stage": "pack", **entry.as_dict()} for entry in skipped]
    return dataset


def _cached_image_set(
    config: PretrainDataConfig,
    image_size: tuple[int, int],
    progress: CropProgressCallback | None,
    cache_root: str | Path | None,
) -> PretrainImageSet:
    """The selected records of the manifest, decoded once into (or found in) a crop cache."""
    manifest = load_manifest(config.source, config.path, **config.manifest_options)
    records = select_records(manifest, config.frame_stride, config.max_per_tracklet)
    if not records:
        raise ValueError(f"pretrain_data: the {config.source!r} manifest at {config.path!r} has no records")
    cache = build_crop_cache(
        records,
        resolve_cache_dir(config, cache_root),
        (image_size[0], image_size[1]),
        backend=config.decode_backend,
        device=resolve_decode_device(config.decode_device),
        progress=progress,
    )
    dataset = PretrainImageSet(cache, config.flip_prob)
    skipped = sum(manifest.skipped.values())
    dataset.summary = (
        f"pretrain set: {len(manifest)} records read ({skipped} skipped by the reader), "
        f"{len(records)} selected "
        f"(stride {config.frame_stride}, cap {config.max_per_tracklet or 'none'}), {cache.num_rows} crops "
        f"{image_size[0]}x{image_size[1]} {cache.status} at {cache.folder} "
        f"(decode: {cache.stats.summary()})"
    )
    dataset.skipped = {"reader": dict(manifest.skipped), "decode": dict(cache.stats.skipped)}
    dataset.skipped_entries = [
        *({"stage": "reader", **entry.as_dict()} for entry in manifest.skipped_entries),
        *({"stage": "decode", **entry.as_dict()} for entry in cache.stats.skipped_records),
    ]
    return dataset


__all__ = [
    "DECODE_DEVICES",
    "PretrainDataConfig",
    "PretrainImageSet",
    "build_pretrain_set",
    "pretrain_batch_sampler",
    "resolve_cache_dir",
    "resolve_decode_device",
    "select_records",
    "select_rows",
    "spread_evenly",
]
