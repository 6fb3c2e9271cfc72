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
from reidscale.data.shards import CropShards, PackedCrop, ShardCrops, ShardSetWriter, read_dali_index
from reidscale.data.shards.stream import UNREADABLE_CROP, CropViewLoader, view_seed
from reidscale.data.views.spec import cion_multicrop, flip_only
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


def epoch_batches(loader: CropViewLoader, epoch: int = 0) -> list[dict]:
    loader.set_epoch(epoch)
    return list(loader)


def test_batches_are_the_samplers_rows_with_the_specs_views(shards: CropShards) -> None:
    loader = CropViewLoader(shards, sampler_of(shards), SPEC, seed=3)
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
        assert batch["unreadable"] == [] and batch["images_per_id"] == 2
    row = int(batches[0]["rows"][3])  # the views are the spec's, drawn from (seed, epoch, row)
    image = torch.from_numpy(np.asarray(Image.open(io.BytesIO(jpeg_of(row))).convert("RGB")).copy())
    expected = TorchMultiCrop(SPEC, seed=view_seed(3, 0, row), layout="HWC")(image)
    assert all(torch.equal(batches[0]["views"][v][3], expected[v]) for v in range(SPEC.num_views))


def test_the_same_batches_whatever_the_workers_and_new_views_each_epoch(shards: CropShards) -> None:
    alone = epoch_batches(CropViewLoader(shards, sampler_of(shards), SPEC, seed=3))
    workers = epoch_batches(
        CropViewLoader(shards, sampler_of(shards), SPEC, seed=3, num_workers=2, prefetch=3)
    )
    assert len(alone) == len(workers) == 72 // 8
    for mine, theirs in zip(alone, workers, strict=True):
        assert torch.equal(mine["rows"], theirs["rows"])
        assert all(torch.equal(a, b) for a, b in zip(mine["views"], theirs["views"], strict=True))
    again = epoch_batches(CropViewLoader(shards, sampler_of(shards), SPEC, seed=3), epoch=1)
    assert not torch.equal(alone[0]["views"][0], again[0]["views"][0])


def test_resuming_from_the_samplers_state_continues_the_same_stream(shards: CropShards) -> None:
    straight = epoch_batches(CropViewLoader(shards, sampler_of(shards), SPEC, seed=3))
    first = CropViewLoader(shards, sampler_of(shards), SPEC, seed=3)
    first.set_epoch(0)
    stream = iter(first)
    consumed = [next(stream), next(stream)]
    state = first.sampler.state_dict()
    resumed_sampler = sampler_of(shards)
    resumed_sampler.load_state_dict(state)
    resumed = CropViewLoader(shards, resumed_sampler, SPEC, seed=3)
    rest = list(resumed)
    assert len(consumed) + len(rest) == len(straight)
    for mine, theirs in zip(consumed + rest, straight, strict=True):
        assert torch.equal(mine["rows"], theirs["rows"])
        assert all(torch.equal(a, b) for a, b in zip(mine["views"], theirs["views"], strict=True))


def test_each_rank_streams_its_own_share(shards: CropShards) -> None:
    per_rank = [
        epoch_batches(CropViewLoader(shards, sampler_of(shards, rank, 2), SPEC, seed=3)) for rank in (0, 1)
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
    loader = CropViewLoader(shards, sampler_of(shards), SPEC, seed=3)
    batches = epoch_batches(loader)
    damaged = [batch for batch in batches if batch["unreadable"]]
    assert len(damaged) == 1 and damaged[0]["unreadable"][0][0] == 25
    assert len(damaged[0]["rows"]) == 7 and 25 not in damaged[0]["rows"].tolist()
    assert all(view.shape[0] == 7 for view in damaged[0]["views"])
    assert loader.skipped == {UNREADABLE_CROP: 1}
    assert "shard-000001.tar: record 0000000025: the image does not decode" in loader.skipped_rows[0][1]
    assert sum(len(batch["rows"]) for batch in batches) == 72 - 1


def test_a_sampler_of_another_set_is_refused(shards: CropShards) -> None:
    other = IdentitySampler(np.arange(10), 2, 1, rank=0, world_size=1)
    with pytest.raises(ValueError, match="the sampler knows 10 rows, the crops are 72"):
        CropViewLoader(shards, other, SPEC)


# --- the DALI loader: the same batches, JPEGs decoded and views drawn by DALI ---------------------------


def dali_loader(shards: CropShards, spec=SPEC, device: str = "cpu", **kwargs):
    pytest.importorskip("nvidia.dali")
    from reidscale.data.shards.dali_stream import DaliShardViewLoader

    sampler = kwargs.pop("sampler", None) or sampler_of(shards)
    return DaliShardViewLoader(shards, sampler, spec, seed=3, device=device, num_threads=1, **kwargs)


def damage(shards: CropShards, shard: int, position: int, replace) -> None:
    """Rewrite the JPEG of row (shard, position) in its tar with ``replace(jpeg bytes)`` (same length)."""
    tar = shards.folder / f"shard-{shard:06d}.tar"
    member = read_dali_index(shards.folder / f"shard-{shard:06d}.idx")[position][0]
    raw = bytearray(tar.read_bytes())
    jpeg = bytes(raw[member.offset : member.offset + member.size])
    raw[member.offset : member.offset + member.size] = replace(jpeg)
    tar.write_bytes(bytes(raw))


def test_dali_batches_are_the_samplers_rows_with_the_specs_views(shards: CropShards) -> None:
    batches = epoch_batches(dali_loader(shards))
    plan = sampler_of(shards)
    plan.set_epoch(0)
    assert [batch["rows"].tolist() for batch in batches] == list(plan)
    for batch in batches:
        assert batch["pid"].tolist() == shards.table["pid"][batch["rows"].numpy()].tolist()
        assert batch["camid"].tolist() == [row % 3 for row in batch["rows"].tolist()]
        assert [tuple(view.shape) for view in batch["views"]] == [(8, 3, 32, 16)] * 2 + [(8, 3, 16, 8)] * 2
        assert all(view.dtype == torch.float32 and view.device.type == "cpu" for view in batch["views"])
        assert batch["unreadable"] == [] and batch["images_per_id"] == 2


def test_dali_decodes_the_jpegs_as_pil_does(shards: CropShards) -> None:
    """With views that only normalise (whole crop at its stored size, no flip), a view is the decoded JPEG:
    DALI's decoder within 2 grey levels of PIL's (both libjpeg-turbo; IDCT / upsampling may differ)."""
    same = flip_only((40, 20), flip_p=0.0)
    batch = epoch_batches(dali_loader(shards, same))[0]
    mean = torch.tensor(same.mean).view(3, 1, 1)
    std = torch.tensor(same.std).view(3, 1, 1)
    for row, view in zip(batch["rows"].tolist(), batch["views"][0], strict=True):
        pixels = torch.from_numpy(shards.image(row)).permute(2, 0, 1).float() / 255
        assert (view * std + mean - pixels).abs().max().item() <= 2 / 255 + 1e-6


def test_dali_views_repeat_with_the_seed_and_change_with_the_epoch(shards: CropShards) -> None:
    once, twice = epoch_batches(dali_loader(shards)), epoch_batches(dali_loader(shards))
    for mine, theirs in zip(once, twice, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(mine["views"], theirs["views"], strict=True))
    later = epoch_batches(dali_loader(shards), epoch=1)
    assert not torch.equal(once[0]["views"][0], later[0]["views"][0])


def test_dali_resumes_the_stream_position_and_shares_ranks(shards: CropShards) -> None:
    straight = [batch["rows"].tolist() for batch in epoch_batches(dali_loader(shards))]
    first = dali_loader(shards)
    first.set_epoch(0)
    stream = iter(first)
    consumed = [next(stream)["rows"].tolist() for _ in range(3)]
    resumed_sampler = sampler_of(shards)
    resumed_sampler.load_state_dict(
        {**first.sampler.state_dict(), "position": 3}  # the trainer's count: DALI has read ahead
    )
    rest = [batch["rows"].tolist() for batch in dali_loader(shards, sampler=resumed_sampler)]
    assert consumed + rest == straight
    per_rank = [epoch_batches(dali_loader(shards, sampler=sampler_of(shards, r, 2))) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 72 // 16
    for ours, theirs in zip(*per_rank, strict=True):
        assert not set(ours["rows"].tolist()) & set(theirs["rows"].tolist())


def test_dali_leaves_out_a_crop_that_is_not_a_jpeg_and_names_it(shards: CropShards) -> None:
    damage(shards, 1, 5, lambda jpeg: b"\0" * 32 + jpeg[32:])  # row 25
    loader = dali_loader(shards)
    batches = epoch_batches(loader)
    damaged = [batch for batch in batches if batch["unreadable"]]
    assert len(damaged) == 1 and damaged[0]["unreadable"][0][0] == 25
    assert len(damaged[0]["rows"]) == 7 and all(view.shape[0] == 7 for view in damaged[0]["views"])
    assert loader.skipped == {UNREADABLE_CROP: 1}
    assert (
        "shard-000001.tar: record 0000000025: the image does not start with a JPEG"
        in loader.skipped_rows[0][1]
    )
    assert sum(len(batch["rows"]) for batch in batches) == 72 - 1


def test_dali_failing_on_a_batch_finds_the_bad_jpeg_and_goes_on(shards: CropShards) -> None:
    """Markers intact, the inside garbage: only a decoder notices; the batch is sifted with PIL, the bad
    row left out, the other seven decoded again, and every later batch still comes."""
    damage(
        shards,
        0,
        3,
        lambda jpeg: jpeg[:2] + b"\xff\x01" * ((len(jpeg) - 4) // 2) + jpeg[-2 - len(jpeg) % 2 :],
    )
    loader = dali_loader(shards)
    batches = epoch_batches(loader)
    plan = sampler_of(shards)
    plan.set_epoch(0)
    expected = [[row for row in rows if row != 3] for rows in plan]
    assert [batch["rows"].tolist() for batch in batches] == expected
    assert loader.skipped == {UNREADABLE_CROP: 1} and loader.skipped_rows[0][0] == 3
    assert "record 0000000003: the image does not decode" in loader.skipped_rows[0][1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dali_gpu_stream_lands_in_cuda_tensors_with_the_cpu_streams_rows(shards: CropShards) -> None:
    gpu = epoch_batches(dali_loader(shards, device="gpu"))
    cpu = epoch_batches(dali_loader(shards))
    assert [b["rows"].tolist() for b in gpu] == [b["rows"].tolist() for b in cpu]
    assert all(view.is_cuda for batch in gpu for view in batch["views"])
    same = flip_only((40, 20), flip_p=0.0)
    on_gpu, on_cpu = (
        epoch_batches(dali_loader(shards, same, "gpu"))[0],
        epoch_batches(dali_loader(shards, same))[0],
    )
    assert (on_gpu["views"][0].cpu() - on_cpu["views"][0]).abs().max().item() < 0.05  # nvJPEG vs libjpeg


def test_the_views_follow_the_samplers_epoch(shards: CropShards) -> None:
    """A trainer selects the epoch on the sampler alone; the views of that epoch come all the same."""
    by_loader = epoch_batches(CropViewLoader(shards, sampler_of(shards), SPEC, seed=3), epoch=2)
    loader = CropViewLoader(shards, sampler_of(shards), SPEC, seed=3)
    loader.sampler.set_epoch(2)
    for mine, theirs in zip(list(loader), by_loader, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(mine["views"], theirs["views"], strict=True))


def test_the_stream_backend_is_torch_on_the_cpu_and_dali_on_a_gpu(shards: CropShards, monkeypatch) -> None:
    from reidscale.data.shards import streams

    assert streams.resolve_stream_backend("auto", "cpu") == "torch"
    monkeypatch.setattr(streams, "dali_available", lambda: True)
    assert streams.resolve_stream_backend("auto", "gpu") == "dali"
    assert isinstance(streams.build_view_stream(shards, sampler_of(shards), SPEC), CropViewLoader)
    monkeypatch.setattr(streams, "dali_available", lambda: False)
    assert streams.resolve_stream_backend("auto", "gpu") == "torch"
    with pytest.raises(RuntimeError, match="the dali stream needs nvidia-dali"):
        streams.resolve_stream_backend("dali", "cpu")
    with pytest.raises(ValueError, match=r"stream backend must be one of \('auto', 'torch', 'dali'\)"):
        streams.resolve_stream_backend("pil", "cpu")


@pytest.mark.parametrize("stream", ["torch", "dali"])
def test_mean_colour_keeps_the_batch_size_with_a_flat_image_in_place(shards: CropShards, stream: str) -> None:
    """For methods that need every batch whole: the unreadable row stays, its views flat at the mean
    colour (zeros after normalisation, up to JPEG rounding on the DALI side), and it is still named."""
    damage(shards, 1, 5, lambda jpeg: b"\0" * 32 + jpeg[32:])  # row 25
    flat = flip_only((40, 20), flip_p=0.0)
    if stream == "torch":
        loader = CropViewLoader(shards, sampler_of(shards), flat, seed=3, unreadable="mean_colour")
    else:
        loader = dali_loader(shards, flat, unreadable="mean_colour")
    batches = epoch_batches(loader)
    assert all(len(batch["rows"]) == 8 for batch in batches)
    (damaged,) = [batch for batch in batches if batch["unreadable"]]
    position = damaged["rows"].tolist().index(25)
    assert damaged["unreadable"][0][0] == 25 and loader.skipped == {UNREADABLE_CROP: 1}
    assert damaged["views"][0][position].abs().max().item() < 0.03
    others = [i for i in range(8) if i != position]
    assert damaged["views"][0][others].abs().max().item() > 0.5


def test_dali_reads_chosen_rows_of_a_shard_set(shards: CropShards) -> None:
    chosen = ShardCrops(shards, np.arange(0, 72, 2), size=None)  # every other row: 36 items
    sampler = IdentitySampler(chosen.rows["pid"], 6, 3, rank=0, world_size=1, seed=5)
    batches = epoch_batches(dali_loader(chosen, flip_only((40, 20), flip_p=0.0), sampler=sampler))
    for batch in batches:
        items = batch["rows"].numpy()
        assert items.max() < 36 and batch["pid"].tolist() == shards.table["pid"][2 * items].tolist()
    first = batches[0]
    row = 2 * int(first["rows"][0])
    pixels = torch.from_numpy(shards.image(row)).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(SPEC.mean).view(3, 1, 1), torch.tensor(SPEC.std).view(3, 1, 1)
    assert (first["views"][0][0] * std + mean - pixels).abs().max().item() <= 2 / 255 + 1e-6
    with pytest.raises(ValueError, match="the sampler knows 72 rows, the crops are 36"):
        dali_loader(chosen, sampler=sampler_of(shards))
