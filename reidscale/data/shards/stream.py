"""Identity batches of multi-crop views streamed from a crop shard set or any ``CropSource`` (torch, CPU).

    IdentitySampler (N identities × K rows per batch, this rank's share, K on its schedule)
      ──► CropViewSet: the row's crop (from a shard set: its JPEG read at its indexed offset and decoded
          with PIL; from a crop cache: its pixels), the spec's views drawn by ``TorchMultiCrop`` (in
          DataLoader workers, ``prefetch`` batches ahead per worker)
      ──► collate_views: {"rows" [B], "pid" [B], "camid" [B], "views" list[float32 [B, 3, h, w]],
          "unreadable": [(row, problem)]}, plus "images_per_id": the sampler's K of the epoch

Every row's views are drawn from a generator seeded by (seed, epoch, row), so a batch is the same whatever
the number of workers, and a run resumed from the sampler's ``state_dict`` sees exactly the views it would
have seen. A row whose crop cannot be read or decoded never stops a long job; it is named in the batch's
``unreadable`` list, counted in the loader's ``skipped`` (reason → count) and ``skipped_rows``, and, by the
``unreadable`` policy (``UNREADABLE_POLICIES``), either left out of its batch ("leave_out": the batch then
holds fewer than N × K rows) or kept with every view the mean colour, zeros after normalisation
("mean_colour": every batch keeps its size, which methods that exchange fixed-size batches between ranks
need).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from reidscale.data.crop_source import CropSource
from reidscale.data.sampler import IdentitySampler
from reidscale.data.shards.layout import ShardError
from reidscale.data.shards.reader import CropShards, ShardCrops
from reidscale.data.views.spec import MultiCropSpec
from reidscale.data.views.torch_views import TorchMultiCrop

UNREADABLE_CROP = "unreadable_crop"  # skip reason: the crop's bytes cannot be read from its shard or decoded
UNREADABLE_POLICIES: tuple[str, ...] = ("leave_out", "mean_colour")


def check_unreadable_policy(policy: str) -> str:
    if policy not in UNREADABLE_POLICIES:
        raise ValueError(f"unreadable must be one of {UNREADABLE_POLICIES}, got {policy!r}")
    return policy


def view_seed(seed: int, epoch: int, row: int) -> int:
    """The seed of row ``row``'s views in ``epoch``: one 63-bit number from (seed, epoch, row)."""
    state = np.random.SeedSequence([seed, epoch, row]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def as_crop_source(crops: CropShards | CropSource) -> CropSource:
    """A shard set as a ``CropSource`` of all its rows at their stored sizes; any other source as it is."""
    if isinstance(crops, CropShards):
        return ShardCrops(crops, np.arange(len(crops)), size=None)
    return crops


class CropViewSet(Dataset):
    """Item ``row`` of a shard set or crop source: ``{"row", "pid", "camid", "views": list[float32 [3, h, w]]
    | None, "problem": str | None}``; when the crop cannot be read the problem is named and the views are
    None ("leave_out") or all zeros ("mean_colour")."""

    def __init__(
        self,
        crops: CropShards | CropSource,
        spec: MultiCropSpec,
        seed: int = 0,
        unreadable: str = "leave_out",
    ) -> None:
        self.crops, self.spec, self.seed, self.epoch = as_crop_source(crops), spec, int(seed), 0
        self.unreadable = check_unreadable_policy(unreadable)

    def __len__(self) -> int:
        return self.crops.num_rows

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, row: int) -> dict[str, Any]:
        table = self.crops.rows
        item = {"row": int(row), "pid": int(table["pid"][row]), "camid": int(table["camera"][row])}
        try:
            pixels = self.crops.crop(row)
        except ShardError as err:
            if self.unreadable == "leave_out":
                return {**item, "views": None, "problem": str(err)}
            blank = [torch.zeros(3, *group.size) for group, _ in self.spec.views()]
            return {**item, "views": blank, "problem": str(err)}
        views = TorchMultiCrop(self.spec, seed=view_seed(self.seed, self.epoch, row), layout="HWC")
        return {**item, "views": views(torch.from_numpy(pixels)), "problem": None}


def collate_views(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One batch from ``CropViewSet`` items: those with views stacked, the unreadable ones listed."""
    kept = [item for item in items if item["views"] is not None]
    batch: dict[str, Any] = {
        "rows": torch.tensor([item["row"] for item in kept], dtype=torch.int64),
        "pid": torch.tensor([item["pid"] for item in kept], dtype=torch.int64),
        "camid": torch.tensor([item["camid"] for item in kept], dtype=torch.int64),
        "views": [torch.stack(views) for views in zip(*(item["views"] for item in kept), strict=True)],
        "unreadable": [(item["row"], item["problem"]) for item in items if item["problem"] is not None],
    }
    return batch


class CropViewLoader:
    """Iterates this rank's identity batches of views for one epoch (``set_epoch`` first), counting unreadable
    rows in ``skipped`` (reason → count) and naming them in ``skipped_rows``.

    unreadable: what an unreadable row becomes, "leave_out" or "mean_colour" (module doc).

    num_workers: DataLoader worker processes decoding and drawing views; prefetch: batches each worker
    prepares ahead (DataLoader's ``prefetch_factor``; ignored without workers).
    """

    def __init__(
        self,
        crops: CropShards | CropSource,
        sampler: IdentitySampler,
        spec: MultiCropSpec,
        seed: int = 0,
        num_workers: int = 0,
        prefetch: int = 2,
        unreadable: str = "leave_out",
    ) -> None:
        if num_workers < 0 or prefetch < 1:
            raise ValueError(f"num_workers must be >= 0 and prefetch >= 1, got {num_workers}, {prefetch}")
        self.dataset = CropViewSet(crops, spec, seed, unreadable)
        if len(sampler.pids) != len(self.dataset):
            raise ValueError(f"the sampler knows {len(sampler.pids)} rows, the crops are {len(self.dataset)}")
        self.sampler = sampler
        self.num_workers, self.prefetch = int(num_workers), int(prefetch)
        self.skipped: Counter[str] = Counter()
        self.skipped_rows: list[tuple[int, str]] = []

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (the sampler's; the views follow the sampler's epoch when iterated, so a trainer
        that only calls ``sampler.set_epoch`` gets the same batches)."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.set_epoch(self.sampler.epoch)
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=collate_views,
            prefetch_factor=self.prefetch if self.num_workers else None,
        )
        images_per_id = self.sampler.k_now()
        for batch in loader:
            for row, problem in batch["unreadable"]:
                self.skipped[UNREADABLE_CROP] += 1
                self.skipped_rows.append((row, problem))
            yield {**batch, "images_per_id": images_per_id}
