"""Identity batches of multi-crop views streamed from crop shards (reidscale.data.shards.stream): the
sampler's N × K rows, the spec's views, the same batches whatever the workers, exact resume, per-rank
shares and a crop that cannot be read left out and named."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidscale.data.records import CropRecord
from reidscale.data.sampler import IdentitySampler
from reidscale.data.shards import CropShards, PackedCrop, ShardSetWriter, read_dali_index
from reidscale.data.shards.stream import UNREADABLE_CROP, ShardViewLoader, view_seed
from reidscale.data.views.spec import cion_multicrop
from reidscale.data.views.torch_views import TorchMultiCrop

IDENTITIES, PER_IDENTITY = 12, 6
SPEC = cion_multicrop(num_local=2, global_size=(32, 16), local_size=(16, 8))


def jpeg_of(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 20, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def shards(tmp_path: Path) -> CropShards:
    """72 crops of 12 identities (6 each, consecutive rows), in shards of 20."""
    total = IDENTITIES * PER_IDENTITY
    writer = ShardSetWriter(tmp_path / "set", total, 20, {"encoding": "jpeg"}, {"kind": "test"})
    for index in writer.pending():
        crops = [
            PackedCrop(p, CropRecord(f"/c/{p}.jpg", -1, (0, 0, 0, 0), p // PER_IDENTITY, p % 3), jpeg_of(p))
            for p in writer.info.shard_range(index)
        ]
        writer.add(index, crops)
    return CropShards(tmp_path / "set")


def sampler_of(shards: CropShards, rank: int = 0, world_size: int = 1) -> IdentitySampler:
    return IdentitySampler(shards.table["pid"], 8, 2, rank=rank, world_size=world_size, seed=5)


def epoch_batches(loader: ShardViewLoader, epoch: int = 0) -> list[dict]:
    loader.set_epoch(epoch)
    return list(loader)


def test_batches_are_the_samplers_rows_with_the_specs_views(shards: CropShards) -> None:
    loader = ShardViewLoader(shards, sampler_of(shards), SPEC, seed=3)
    batches = epoch_batches(loader)
    plan = sampler_of(shards)
    plan.set_epoch(0)
    assert [batch["rows"].tolist() for batch in batches] == list(plan)
    for batch in batches:
        pids = batch["pid"].tolist()
        assert pids == shards.table["pid"][batch["rows"].numpy()].tolist()
        assert all(pids[i] == pids[i + 1] for i in range(0, 8, 2))  # K = 2 rows per identity, in a row
        assert [tuple(view.shape) for view in batch["views"]] == [(8, 3, 32, 16)] * 2 + [(8, 3, 16, 8)] * 2
        assert batch["camid"].tolist() == [row % 3 for row in batch["rows"].tolist()]
        assert batch["skipped"] == []
    row = int(batches[0]["rows"][3])  # the views are the spec's, drawn from (seed, epoch, row)
    image = torch.from_numpy(np.asarray(Image.open(io.BytesIO(jpeg_of(row))).convert("RGB")).copy())
    expected = TorchMultiCrop(SPEC, seed=view_seed(3, 0, row), layout="HWC")(image)
    assert all(torch.equal(batches[0]["views"][v][3], expected[v]) for v in range(SPEC.num_views))


def test_the_same_batches_whatever_the_workers_and_new_views_each_epoch(shards: CropShards) -> None:
    alone = epoch_batches(ShardViewLoader(shards, sampler_of(shards), SPEC, seed=3))
    workers = epoch_batches(
        ShardViewLoader(shards, sampler_of(shards), SPEC, seed=3, num_workers=2, prefetch=3)
    )
    assert len(alone) == len(workers) == 72 // 8
    for mine, theirs in zip(alone, workers, strict=True):
        assert torch.equal(mine["rows"], theirs["rows"])
        assert all(torch.equal(a, b) for a, b in zip(mine["views"], theirs["views"], strict=True))
    again = epoch_batches(ShardViewLoader(shards, sampler_of(shards), SPEC, seed=3), epoch=1)
    assert not torch.equal(alone[0]["views"][0], again[0]["views"][0])


def test_resuming_from_the_samplers_state_continues_the_same_stream(shards: CropShards) -> None:
    straight = epoch_batches(ShardViewLoader(shards, sampler_of(shards), SPEC, seed=3))
    first = ShardViewLoader(shards, sampler_of(shards), SPEC, seed=3)
    first.set_epoch(0)
    stream = iter(first)
    consumed = [next(stream), next(stream)]
    state = first.sampler.state_dict()
    resumed_sampler = sampler_of(shards)
    resumed_sampler.load_state_dict(state)
    resumed = ShardViewLoader(shards, resumed_sampler, SPEC, seed=3)
    resumed.dataset.set_epoch(state["epoch"])
    rest = list(resumed)
    assert len(consumed) + len(rest) == len(straight)
    for mine, theirs in zip(consumed + rest, straight, strict=True):
        assert torch.equal(mine["rows"], theirs["rows"])
        assert all(torch.equal(a, b) for a, b in zip(mine["views"], theirs["views"], strict=True))


def test_each_rank_streams_its_own_share(shards: CropShards) -> None:
    per_rank = [
        epoch_batches(ShardViewLoader(shards, sampler_of(shards, rank, 2), SPEC, seed=3)) for rank in (0, 1)
    ]
    assert len(per_rank[0]) == len(per_rank[1]) == 72 // 16
    for step in range(len(per_rank[0])):
        rows = [set(per_rank[rank][step]["rows"].tolist()) for rank in (0, 1)]
        assert not rows[0] & rows[1]


def test_a_crop_that_cannot_be_read_is_left_out_and_named(shards: CropShards) -> None:
    tar = shards.folder / "shard-000001.tar"  # rows 20..39
    member = read_dali_index(shards.folder / "shard-000001.idx")[5][0]  # row 25
    raw = bytearray(tar.read_bytes())
    raw[member.offset : member.offset + 32] = b"\0" * 32
    tar.write_bytes(bytes(raw))
    loader = ShardViewLoader(shards, sampler_of(shards), SPEC, seed=3)
    batches = epoch_batches(loader)
    damaged = [batch for batch in batches if batch["skipped"]]
    assert len(damaged) == 1 and damaged[0]["skipped"][0][0] == 25
    assert len(damaged[0]["rows"]) == 7 and 25 not in damaged[0]["rows"].tolist()
    assert all(view.shape[0] == 7 for view in damaged[0]["views"])
    assert loader.skipped == {UNREADABLE_CROP: 1}
    assert "shard-000001.tar: record 0000000025: the image does not decode" in loader.skipped_rows[0][1]
    assert sum(len(batch["rows"]) for batch in batches) == 72 - 1


def test_a_sampler_of_another_set_is_refused(shards: CropShards) -> None:
    other = IdentitySampler(np.arange(10), 2, 1, rank=0, world_size=1)
    with pytest.raises(ValueError, match="the sampler knows 10 rows, the shard set has 72"):
        ShardViewLoader(shards, other, SPEC)
