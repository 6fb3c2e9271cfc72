"""Identity batches of multi-crop views from a crop shard set, decoded and drawn by DALI, on the CPU or GPU.

    IdentitySampler (N identities × K rows per batch, this rank's share)
      ──► _JpegFeeder (external source: each row's JPEG bytes read at its indexed offset, ``os.pread``)
      ──► fn.decoders.image (device "cpu": libjpeg-turbo threads; "mixed": nvJPEG / the hardware decoder)
      ──► dali_multicrop (the spec's views, on the decoder's device)
      ──► {"rows" [B], "pid" [B], "camid" [B], "views" list[float32 [B, 3, h, w]] on the device,
           "unreadable": [(row, problem)], "images_per_id": the sampler's K of the epoch}

The batch order is the sampler's, so the stream resumes exactly from the sampler's ``state_dict``. The
views' random choices come from DALI's generator, seeded per (seed, epoch, rank) when an epoch starts: a
run is reproducible from its start, but a resumed run draws new views for the rest of its epoch (the
torch loader of ``stream.py`` draws them per row and resumes them exactly too).

Unreadable crops never stop a long job. A JPEG whose bytes cannot be read from the shard or do not start
and end as a JPEG does is caught before DALI sees it; when DALI nevertheless fails on a batch, the
pipeline is rebuilt, that batch's JPEGs are decoded once with PIL to find the culprits, which are
remembered, and the batch goes through again (``DALI_FAILURES_IN_A_ROW`` failures on batches in which PIL
finds nothing wrong stop the run: the fault is then DALI's or the device's, not the data's). As in
``stream.py``, an unreadable row is named in the batch's ``unreadable`` list, counted in ``skipped``, and
left out of its batch ("leave_out"; when a batch has nothing left, its rows are named with the next batch)
or kept with a flat image of the spec's mean colour decoded in its place ("mean_colour").
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

import numpy as np
import torch

from reidscale.data.decode.dali_torch import dali_to_torch
from reidscale.data.sampler import IdentitySampler
from reidscale.data.shards.layout import ShardError
from reidscale.data.shards.reader import CropShards, ShardCrops, decode_jpeg
from reidscale.data.shards.stream import UNREADABLE_CROP, check_unreadable_policy, view_seed
from reidscale.data.views.spec import MultiCropSpec

JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
DALI_FAILURES_IN_A_ROW = 3  # DALI failures on clean batches, one after the other, before the run stops
DECODE_DEVICES: tuple[str, ...] = ("cpu", "gpu")


def jpeg_problem(data: bytes) -> str | None:
    """Why ``data`` cannot be a whole JPEG file (no start-of-image marker first, no end-of-image marker
    last, trailing zero padding allowed), or None. A cheap test: it does not decode anything."""
    if not data.startswith(JPEG_START):
        return "the image does not start with a JPEG start-of-image marker"
    if not data.rstrip(b"\0").endswith(JPEG_END):
        return "the image does not end with a JPEG end-of-image marker (truncated?)"
    return None


def mean_colour_jpeg(spec: MultiCropSpec) -> bytes:
    """A small JPEG of one flat colour, ``spec``'s normalisation mean: what "mean_colour" decodes in place
    of an unreadable crop (its views are flat and about zero after normalisation)."""
    from reidscale.data.shards.pack import encode_jpeg

    colour = np.rint(255 * np.asarray(spec.mean)).astype(np.uint8)
    return encode_jpeg(np.broadcast_to(colour, (16, 8, 3)).copy(), 95)


class _JpegFeeder:
    """DALI external source: per call, the JPEG bytes of the next batch of ``batches`` (items) that has
    something to decode. ``fed`` queues (items asked, items fed, [(item, problem)] unreadable) in the order
    DALI will return the batches. An unreadable item (``read`` raises ShardError, or it is in ``known_bad``)
    is fed as ``substitute`` when one is given, else left out; the unreadable items of a batch with nothing
    to feed wait in ``carried`` for the next batch."""

    def __init__(
        self,
        read,
        batches: Iterator[list[int]],
        known_bad: dict[int, str],
        substitute: bytes | None,
        carried: list[tuple[int, str]],
    ) -> None:
        self.read, self.batches, self.known_bad = read, batches, known_bad
        self.substitute = None if substitute is None else np.frombuffer(substitute, dtype=np.uint8)
        self.fed: deque[tuple[list[int], list[int], list[tuple[int, str]]]] = deque()
        self.carried = carried

    def __call__(self) -> list[np.ndarray]:
        for items in self.batches:
            data, kept, unreadable = [], [], []
            for item in items:
                problem = self.known_bad.get(item)
                if problem is None:
                    try:
                        data.append(np.frombuffer(self.read(item), dtype=np.uint8))
                        kept.append(item)
                        continue
                    except ShardError as err:
                        problem = str(err)
                unreadable.append((item, problem))
                if self.substitute is not None:
                    data.append(self.substitute)
                    kept.append(item)
            if not kept:
                self.carried.extend(unreadable)
                continue
            self.fed.append((list(items), kept, self.carried + unreadable))
            self.carried = []
            return data
        raise StopIteration


class DaliShardViewLoader:
    """Iterates this rank's identity batches of views for one epoch (``set_epoch`` first), JPEGs decoded
    and views drawn by DALI on ``device``; the same batches and interface as ``CropViewLoader``.

    crops:       a shard set (item = row), or chosen rows of one (``ShardCrops``: item i = its row
                 ``selected[i]``; its ``size`` is not used, the views resize)
    device:      "cpu" (DALI's CPU decoder and operators, ``num_threads`` threads) or "gpu" (nvJPEG /
                 hardware decoding through DALI's "mixed" decoder, views on the GPU, CUDA tensors out)
    prefetch:    batches DALI prepares ahead of the one being consumed
    num_threads: DALI CPU threads (decoding on "cpu", reading and scheduling on both)
    unreadable:  what an unreadable item becomes, "leave_out" or "mean_colour" (module doc)
    """

    def __init__(
        self,
        crops: CropShards | ShardCrops,
        sampler: IdentitySampler,
        spec: MultiCropSpec,
        seed: int = 0,
        device: str = "cpu",
        num_threads: int = 2,
        prefetch: int = 2,
        unreadable: str = "leave_out",
    ) -> None:
        if device not in DECODE_DEVICES:
            raise ValueError(f"device must be one of {DECODE_DEVICES}, got {device!r}")
        if device == "gpu" and not torch.cuda.is_available():
            raise RuntimeError("device='gpu' was requested but torch sees no CUDA device")
        if num_threads < 1 or prefetch < 1:
            raise ValueError(f"num_threads and prefetch must be >= 1, got {num_threads}, {prefetch}")
        if isinstance(crops, ShardCrops):
            self.shards, self.selected = crops.shards, crops.selected
        else:
            self.shards, self.selected = crops, np.arange(len(crops), dtype=np.int64)
        if len(sampler.pids) != len(self.selected):
            raise ValueError(
                f"the sampler knows {len(sampler.pids)} rows, the crops are {len(self.selected)}"
            )
        self.sampler, self.spec = sampler, spec
        self.seed, self.device = int(seed), device
        self.num_threads, self.prefetch = int(num_threads), int(prefetch)
        self.unreadable = check_unreadable_policy(unreadable)
        self.skipped: Counter[str] = Counter()
        self.skipped_rows: list[tuple[int, str]] = []
        self._known_bad: dict[int, str] = {}  # items DALI failed on, found with PIL: not fed again

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (the sampler's, which seeds the views when the epoch is iterated)."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def _read(self, item: int) -> bytes:
        """The JPEG bytes of ``item``; ShardError naming the shard and record when they cannot be read or
        are not a whole JPEG."""
        row = int(self.selected[item])
        jpeg = self.shards.jpeg(row)
        problem = jpeg_problem(jpeg)
        if problem is not None:
            raise ShardError(f"{self.shards.where(row)}: {problem}")
        return jpeg

    def _pipeline(self, feeder: _JpegFeeder, restart: int):
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        from reidscale.data.views.dali_views import dali_multicrop

        seed = view_seed(self.seed, self.sampler.epoch, self.sampler.rank * 1_000_003 + restart) % 2**31
        pipe = Pipeline(
            batch_size=self.sampler.batch_size,
            num_threads=self.num_threads,
            device_id=torch.cuda.current_device() if self.device == "gpu" else None,
            prefetch_queue_depth=self.prefetch,
            seed=seed,
        )
        with pipe:
            jpegs = fn.external_source(source=feeder, batch=True, dtype=types.UINT8, ndim=1)
            decoder = "mixed" if self.device == "gpu" else "cpu"
            images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
            pipe.set_outputs(*dali_multicrop(images, self.spec, self.device))
        pipe.build()
        return pipe

    def _batch(self, kept: list[int], unreadable: list[tuple[int, str]], outputs: Iterable) -> dict[str, Any]:
        table = self.shards.table
        for item, problem in unreadable:
            self.skipped[UNREADABLE_CROP] += 1
            self.skipped_rows.append((item, problem))
        items = np.asarray(kept, dtype=np.int64)
        rows = self.selected[items]
        return {
            "rows": torch.from_numpy(items),
            "pid": torch.from_numpy(table["pid"][rows].astype(np.int64)),
            "camid": torch.from_numpy(table["camera"][rows].astype(np.int64)),
            "views": [dali_to_torch(view, torch.float32, self.device) for view in outputs],
            "unreadable": unreadable,
            "images_per_id": self.sampler.k_now(),
        }

    def _sift(self, items: list[int]) -> dict[int, str]:
        """The items of ``items`` whose JPEG PIL cannot decode, with the problem."""
        bad = {}
        for item in items:
            row = int(self.selected[item])
            try:
                decode_jpeg(self.shards.jpeg(row), self.shards.where(row))
            except ShardError as err:
                bad[item] = str(err)
        return bad

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches: Iterator[list[int]] = iter(self.sampler)
        substitute = mean_colour_jpeg(self.spec) if self.unreadable == "mean_colour" else None
        carried: list[tuple[int, str]] = []
        restarts = failures_in_a_row = 0
        while True:
            feeder = _JpegFeeder(self._read, batches, self._known_bad, substitute, carried)
            pipe = self._pipeline(feeder, restarts)
            try:
                while True:
                    outputs = pipe.run()
                    _, kept, unreadable = feeder.fed.popleft()
                    failures_in_a_row = 0
                    yield self._batch(kept, unreadable, outputs)
            except StopIteration:
                self._batch([], feeder.carried, [])  # unreadable rows after the last batch: counted
                return
            except RuntimeError as err:
                asked, kept, unreadable = feeder.fed.popleft()
                bad = self._sift([item for item in kept if item not in dict(unreadable)])
                if not bad:
                    failures_in_a_row += 1
                    if failures_in_a_row >= DALI_FAILURES_IN_A_ROW:
                        raise RuntimeError(
                            f"DALI failed on {failures_in_a_row} batches in a row whose JPEGs PIL decodes; "
                            f"the last error: {err}"
                        ) from err
                    bad = {item: f"DALI failed on its batch: {err}" for item in kept}
                self._known_bad.update(bad)
                # the failed batch and the prefetched ones are fed again; the unreadable items carried into
                # them from batches with nothing to feed are not asked again, so they are carried once more
                pending = [(asked, unreadable), *((a, u) for a, _, u in feeder.fed)]
                carried = [item for a, u in pending for item in u if item[0] not in set(a)] + feeder.carried
                batches = chain((a for a, _ in pending), batches)
                restarts += 1
            finally:
                del pipe
