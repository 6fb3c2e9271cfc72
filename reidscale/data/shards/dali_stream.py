"""Identity batches of multi-crop views from a crop shard set, decoded and drawn by DALI, on the CPU or GPU.

    IdentitySampler (N identities × K rows per batch, this rank's share)
      ──► _JpegFeeder (external source: each row's JPEG bytes read at its indexed offset, ``os.pread``)
      ──► fn.decoders.image (device "cpu": libjpeg-turbo threads; "mixed": nvJPEG / the hardware decoder)
      ──► dali_multicrop (the spec's views, on the decoder's device)
      ──► {"rows" [B], "pid" [B], "camid" [B], "views" list[float32 [B, 3, h, w]] on the device, "skipped"}

The batch order is the sampler's, so the stream resumes exactly from the sampler's ``state_dict``. The
views' random choices come from DALI's generator, seeded per (seed, epoch, rank) when an epoch starts: a
run is reproducible from its start, but a resumed run draws new views for the rest of its epoch (the
torch loader of ``stream.py`` draws them per row and resumes them exactly too).

Unreadable crops never stop a long job. A JPEG whose bytes cannot be read from the shard or do not start
and end as a JPEG does is left out before DALI sees it; when DALI nevertheless fails on a batch, the
pipeline is rebuilt, that batch's JPEGs are decoded once with PIL to find the culprits, which are left
out, and the rest of the batch goes through again (``DALI_FAILURES_IN_A_ROW`` failures on batches in which
PIL finds nothing wrong stop the run: the fault is then DALI's or the device's, not the data's). Left-out
rows are named in the batch's ``skipped`` list (or the next batch's, when none of a batch's rows is left)
and counted in ``loader.skipped``.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

import numpy as np
import torch

from reidscale.data.decode.dali_torch import dali_to_torch
from reidscale.data.decode.stats import DALI_BATCH_ERROR
from reidscale.data.sampler import IdentitySampler
from reidscale.data.shards.layout import ShardError
from reidscale.data.shards.reader import CropShards, decode_jpeg
from reidscale.data.shards.stream import UNREADABLE_CROP, view_seed
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


class _JpegFeeder:
    """DALI external source: per call, the JPEG bytes of the next batch of ``batches`` that has a readable
    row. ``fed`` queues (rows asked, rows fed, [(row, problem)] left out) in the order DALI will return the
    batches; left-out rows of batches with nothing readable wait in ``carried`` for the next batch."""

    def __init__(self, shards: CropShards, batches: Iterator[list[int]], carried: list[tuple[int, str]]):
        self.shards, self.batches = shards, batches
        self.fed: deque[tuple[list[int], list[int], list[tuple[int, str]]]] = deque()
        self.carried = carried

    def __call__(self) -> list[np.ndarray]:
        for rows in self.batches:
            data, kept, left_out = [], [], []
            for row in rows:
                try:
                    jpeg = self.shards.jpeg(row)
                except ShardError as err:
                    left_out.append((row, str(err)))
                    continue
                problem = jpeg_problem(jpeg)
                if problem is not None:
                    left_out.append((row, f"{self.shards.where(row)}: {problem}"))
                    continue
                data.append(np.frombuffer(jpeg, dtype=np.uint8))
                kept.append(row)
            if not kept:
                self.carried.extend(left_out)
                continue
            self.fed.append((list(rows), kept, self.carried + left_out))
            self.carried = []
            return data
        raise StopIteration


class DaliShardViewLoader:
    """Iterates this rank's identity batches of views for one epoch (``set_epoch`` first), JPEGs decoded
    and views drawn by DALI on ``device``; the same batches and interface as ``CropViewLoader``.

    device:      "cpu" (DALI's CPU decoder and operators, ``num_threads`` threads) or "gpu" (nvJPEG /
                 hardware decoding through DALI's "mixed" decoder, views on the GPU, CUDA tensors out)
    prefetch:    batches DALI prepares ahead of the one being consumed
    num_threads: DALI CPU threads (decoding on "cpu", reading and scheduling on both)
    """

    def __init__(
        self,
        shards: CropShards,
        sampler: IdentitySampler,
        spec: MultiCropSpec,
        seed: int = 0,
        device: str = "cpu",
        num_threads: int = 2,
        prefetch: int = 2,
    ) -> None:
        if device not in DECODE_DEVICES:
            raise ValueError(f"device must be one of {DECODE_DEVICES}, got {device!r}")
        if device == "gpu" and not torch.cuda.is_available():
            raise RuntimeError("device='gpu' was requested but torch sees no CUDA device")
        if num_threads < 1 or prefetch < 1:
            raise ValueError(f"num_threads and prefetch must be >= 1, got {num_threads}, {prefetch}")
        if len(sampler.pids) != len(shards):
            raise ValueError(f"the sampler knows {len(sampler.pids)} rows, the shard set has {len(shards)}")
        self.shards, self.sampler, self.spec = shards, sampler, spec
        self.seed, self.device = int(seed), device
        self.num_threads, self.prefetch = int(num_threads), int(prefetch)
        self.skipped: Counter[str] = Counter()
        self.skipped_rows: list[tuple[int, str]] = []

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (the sampler's, which seeds the views when the epoch is iterated)."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

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

    def _batch(self, kept: list[int], left_out: list[tuple[int, str]], outputs: Iterable) -> dict[str, Any]:
        table = self.shards.table
        for row, problem in left_out:
            self.skipped[UNREADABLE_CROP] += 1
            self.skipped_rows.append((row, problem))
        rows = np.asarray(kept, dtype=np.int64)
        return {
            "rows": torch.from_numpy(rows),
            "pid": torch.from_numpy(table["pid"][rows].astype(np.int64)),
            "camid": torch.from_numpy(table["camera"][rows].astype(np.int64)),
            "views": [dali_to_torch(view, torch.float32, self.device) for view in outputs],
            "skipped": left_out,
        }

    def _sift(self, rows: list[int]) -> tuple[list[int], list[tuple[int, str]]]:
        """``rows`` split by a PIL decode into (decodable rows, [(row, problem)] for the others)."""
        good, bad = [], []
        for row in rows:
            try:
                decode_jpeg(self.shards.jpeg(row), self.shards.where(row))
                good.append(row)
            except ShardError as err:
                bad.append((row, str(err)))
        return good, bad

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches: Iterator[list[int]] = iter(self.sampler)
        carried: list[tuple[int, str]] = []
        restarts = failures_in_a_row = 0
        while True:
            feeder = _JpegFeeder(self.shards, batches, carried)
            pipe = self._pipeline(feeder, restarts)
            try:
                while True:
                    outputs = pipe.run()
                    _, kept, left_out = feeder.fed.popleft()
                    failures_in_a_row = 0
                    yield self._batch(kept, left_out, outputs)
            except StopIteration:
                self._batch([], feeder.carried, [])  # rows left out after the last batch: counted
                return
            except RuntimeError as err:
                asked, kept, left_out = feeder.fed.popleft()
                good, bad = self._sift(kept)
                if not bad:
                    failures_in_a_row += 1
                    if failures_in_a_row >= DALI_FAILURES_IN_A_ROW:
                        raise RuntimeError(
                            f"DALI failed on {failures_in_a_row} batches in a row whose JPEGs PIL decodes; "
                            f"the last error: {err}"
                        ) from err
                    self.skipped[DALI_BATCH_ERROR] += len(good)
                    self.skipped_rows.extend((row, f"DALI failed on its batch: {err}") for row in good)
                    good = []
                keep = set(good)
                retry = [[row for row in asked if row in keep]] if good else []
                pending = list(feeder.fed)  # prefetched batches: their rows are read again
                carried = left_out + bad
                for pending_asked, _, pending_left_out in pending:  # rows carried into them, not re-read
                    carried += [item for item in pending_left_out if item[0] not in set(pending_asked)]
                carried += feeder.carried
                batches = chain(retry, (rows for rows, _, _ in pending), batches)
                restarts += 1
            finally:
                del pipe
