"""The pre-training image set: record selection, the on-disk crop cache, the dataset and its sampler.

Truths: hand-worked selections; the crops ``build_crop_loader`` returns for the same records (PyAV path,
pixel-exact); PIL's resize of the Market files; torchvision's ToTensor + Normalize; numpy reading the
compacted ``.npy``; the sampler's invariants (each index once per epoch, disjoint ranks, exact resume).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from reidscale.data import crop_cache
from reidscale.data.crop_cache import build_crop_cache, open_crop_cache
from reidscale.data.decode.crops import UNREADABLE_IMAGE
from reidscale.data.decode.loader import build_crop_loader, crops_by_record
from reidscale.data.decode.stats import BOX_OUTSIDE_FRAME, UNREADABLE_VIDEO
from reidscale.data.manifests import load_manifest
from reidscale.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from reidscale.data.pretrain_set import (
    PretrainDataConfig,
    PretrainImageSet,
    build_pretrain_set,
    pretrain_batch_sampler,
    select_records,
    spread_evenly,
)
from reidscale.data.records import WHOLE_IMAGE, CropRecord, Manifest
from reidscale.data.views.spec import flip_only
from tests.support.processes import HANG_GUARD_S

SIZE = (64, 32)  # small crops keep the decoding tests fast
#: as in test_data_pipeline: DALI and PyAV differ only in YUV→RGB conversion and resampling rounding
DALI_PYAV_MEAN_ABS_TOLERANCE = 5.0


@pytest.fixture(scope="module")
def corpus(tiny_corpus: Path) -> Path:
    return tiny_corpus


@pytest.fixture(scope="module")
def video_records(corpus: Path) -> list[CropRecord]:
    return select_records(load_manifest("video_tracklets", corpus), frame_stride=8, max_per_tracklet=3)


# ---- selection -------------------------------------------------------------------------------------------


def record(tracklet: int, frame: int, pid: int = 0, camera: int = 0, video: str = "v") -> CropRecord:
    source = "/x.avi" if frame >= 0 else f"/img_{pid}_{camera}.jpg"
    return CropRecord(source, frame, (0, 0, 4, 8), pid, camera, video, tracklet)


def test_spread_evenly_hand_worked() -> None:
    assert spread_evenly(10, 3) == [1, 5, 8]  # centres of [0, 3.3), [3.3, 6.7), [6.7, 10)
    assert spread_evenly(7, 1) == [3]
    assert spread_evenly(4, 4) == [0, 1, 2, 3]
    assert spread_evenly(3, 5) == [0, 1, 2]


def test_select_records_stride_and_cap_per_tracklet_in_manifest_order() -> None:
    frames_t0 = [3, 0, 1, 2, 9, 4, 5, 6, 7, 8]  # out of frame order on purpose
    records = [record(0, f) for f in frames_t0] + [record(1, f) for f in range(3)]
    manifest = Manifest("hand", records)
    picked = select_records(manifest, frame_stride=3, max_per_tracklet=0)
    # t0 by frame: 0..9 → frames 0, 3, 6, 9, listed in manifest order (3 first, then 0, 9, 6)
    assert [(r.tracklet, r.frame) for r in picked] == [(0, 3), (0, 0), (0, 9), (0, 6), (1, 0)]
    picked = select_records(manifest, frame_stride=1, max_per_tracklet=3)  # t0 0..9 → 1, 5, 8; t1 all 3
    assert [(r.tracklet, r.frame) for r in picked] == [(0, 1), (0, 5), (0, 8), (1, 0), (1, 1), (1, 2)]
    picked = select_records(manifest, frame_stride=2, max_per_tracklet=2)  # t0 0,2,4,6,8 → 2, 6; t1 0, 2
    assert [(r.tracklet, r.frame) for r in picked] == [(0, 2), (0, 6), (1, 0), (1, 2)]
    assert select_records(manifest, 1, 0) == records


def test_select_records_groups_image_records_by_video_camera_pid() -> None:
    images = [record(-1, -1, pid=p, camera=c) for p, c in [(0, 0), (1, 0), (0, 0), (0, 1), (0, 0), (1, 0)]]
    images = [dataclasses.replace(r, source=f"/img{i}.jpg") for i, r in enumerate(images)]
    picked = select_records(Manifest("images", images), frame_stride=2, max_per_tracklet=0)
    # groups (pid 0, cam 0): 0, 2, 4 → 0, 4; (pid 1, cam 0): 1, 5 → 1; (pid 0, cam 1): 3 → 3
    assert [r.source for r in picked] == ["/img0.jpg", "/img1.jpg", "/img3.jpg", "/img4.jpg"]


@pytest.mark.parametrize(("stride", "cap", "name"), [(0, 0, "frame_stride"), (1, -1, "max_per_tracklet")])
def test_select_records_rejects_bad_arguments(stride: int, cap: int, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        select_records(Manifest("m", [record(0, 0)]), stride, cap)


# ---- the crop cache --------------------------------------------------------------------------------------


def test_cached_crops_equal_the_loader_crops_and_the_records(video_records, tmp_path: Path) -> None:
    cache = build_crop_cache(video_records, tmp_path, SIZE, backend="pyav")
    expected = crops_by_record(build_crop_loader(video_records, 16, SIZE, backend="pyav"))
    assert cache.status == "built" and cache.num_rows == len(video_records) == len(expected)
    for row in range(cache.num_rows):
        assert np.array_equal(cache.crops[row], expected[row]), row
    source = video_records
    assert cache.rows["record"].tolist() == list(range(len(source)))
    assert cache.rows["camera"].tolist() == [r.camera for r in source]
    assert cache.rows["pid"].tolist() == [r.pid for r in source]
    assert cache.rows["tracklet"].tolist() == [r.tracklet for r in source]
    assert cache.rows["frame"].tolist() == [r.frame for r in source]
    assert cache.rows["box"].tolist() == [list(r.box) for r in source]
    assert [cache.sources[i] for i in cache.rows["source"]] == [r.source for r in source]
    assert [cache.videos[i] for i in cache.rows["video"]] == [r.video for r in source]


@pytest.mark.dali
def test_dali_cache_agrees_with_the_pyav_cache(video_records, tmp_path: Path) -> None:
    pytest.importorskip("nvidia.dali")
    device = "gpu" if torch.cuda.is_available() else "cpu"
    dali = build_crop_cache(video_records, tmp_path / "dali", SIZE, backend="dali", device=device)
    pyav = build_crop_cache(video_records, tmp_path / "pyav", SIZE, backend="pyav")
    assert dali.num_rows == pyav.num_rows == len(video_records) and dali.folder.name == pyav.folder.name
    difference = np.abs(np.asarray(dali.crops, dtype=np.float64) - pyav.crops).mean(axis=(1, 2, 3))
    assert difference.max() < DALI_PYAV_MEAN_ABS_TOLERANCE


def test_market_crops_equal_pil_resize_of_the_files(corpus: Path, tmp_path: Path) -> None:
    records = load_manifest("market", corpus / "market").records[:12]
    boxed = dataclasses.replace(records[0], box=(3, 10, 20, 30))  # a box inside the image
    cache = build_crop_cache([*records, boxed], tmp_path, SIZE)
    for row, rec in enumerate(records):
        with Image.open(rec.source) as image:
            truth = image.convert("RGB").resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR)
        assert np.array_equal(cache.crops[row], np.asarray(truth)), rec.source
    with Image.open(boxed.source) as image:
        truth = (
            image.convert("RGB").crop((3, 10, 23, 40)).resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR)
        )
    assert np.array_equal(cache.crops[len(records)], np.asarray(truth))
    assert records[0].box == WHOLE_IMAGE


def test_cache_is_reused_when_unchanged_and_rebuilt_on_changed_size_or_records(video_records, tmp_path):
    records = video_records[:10]
    first = build_crop_cache(records, tmp_path, SIZE, backend="pyav")
    stamp = (first.folder / "crops.npy").stat().st_mtime_ns
    again = build_crop_cache(list(records), tmp_path, SIZE, backend="pyav")
    assert (first.status, again.status) == ("built", "reused") and again.folder == first.folder
    assert (again.folder / "crops.npy").stat().st_mtime_ns == stamp
    resized = build_crop_cache(records, tmp_path, (32, 16), backend="pyav")
    fewer = build_crop_cache(records[:9], tmp_path, SIZE, backend="pyav")
    moved = build_crop_cache(
        [dataclasses.replace(records[0], box=(1, 1, 9, 9)), *records[1:]], tmp_path, SIZE
    )
    assert [c.status for c in (resized, fewer, moved)] == ["built"] * 3
    assert len({c.folder for c in (first, resized, fewer, moved)}) == 4
    assert resized.crops.shape == (10, 32, 16, 3) and fewer.num_rows == 9


def test_corrupt_video_and_unreadable_image_are_skipped_counted_and_compacted(
    video_records, corpus: Path, tmp_path: Path
) -> None:
    broken_video = tmp_path / "broken.avi"
    broken_video.write_bytes(b"not a video" * 100)
    broken_image = tmp_path / "broken.jpg"
    broken_image.write_bytes(b"\xff\xd8 truncated")
    good_image = load_manifest("market", corpus / "market").records[0]
    bad = [dataclasses.replace(video_records[0], source=str(broken_video), frame=f) for f in (0, 5)]
    unreadable = dataclasses.replace(good_image, source=str(broken_image))
    records = [*video_records[:4], *bad, unreadable, good_image, *video_records[4:8]]
    cache = build_crop_cache(records, tmp_path / "cache", SIZE, backend="pyav")
    kept = [0, 1, 2, 3, 7, 8, 9, 10, 11]
    assert cache.stats.skipped == {UNREADABLE_VIDEO: 2, UNREADABLE_IMAGE: 1}
    assert cache.rows["record"].tolist() == kept
    on_disk = np.load(cache.folder / "crops.npy")  # numpy reads the rewritten header and the compact rows
    assert on_disk.shape == (len(kept), *SIZE, 3)
    clean = build_crop_cache([records[i] for i in kept], tmp_path / "clean", SIZE, backend="pyav")
    assert np.array_equal(on_disk, np.asarray(clean.crops))
    assert (cache.folder / "crops.npy").stat().st_size == clean.folder.joinpath("crops.npy").stat().st_size


def test_skipped_records_are_named_with_file_record_and_reason_also_when_reused(
    video_records, corpus: Path, tmp_path: Path
) -> None:
    broken_image = tmp_path / "broken.jpg"
    broken_image.write_bytes(b"\xff\xd8 truncated")
    missing_video = str(tmp_path / "missing.avi")
    good_image = load_manifest("market", corpus / "market").records[0]
    records = [
        dataclasses.replace(good_image, source=str(broken_image)),  # 0: image, so video positions shift
        *video_records[:3],  # 1, 2, 3
        dataclasses.replace(video_records[0], box=(5000, 5000, 10, 10)),  # 4: box outside the frame
        dataclasses.replace(video_records[1], source=missing_video),  # 5: the file does not exist
        good_image,  # 6
    ]
    expected = [
        {"file": str(broken_image), "record": 0, "reason": UNREADABLE_IMAGE},
        {"file": video_records[0].source, "record": 4, "reason": BOX_OUTSIDE_FRAME},
        {"file": missing_video, "record": 5, "reason": UNREADABLE_VIDEO},
    ]
    built = build_crop_cache(records, tmp_path / "cache", SIZE, backend="pyav")
    reused = build_crop_cache(records, tmp_path / "cache", SIZE, backend="pyav")
    assert (built.status, reused.status) == ("built", "reused")
    for cache in (built, reused):
        entries = [entry.as_dict() for entry in cache.stats.skipped_records]
        assert sorted(entries, key=lambda e: e["record"]) == expected
        assert cache.stats.skipped == {UNREADABLE_IMAGE: 1, BOX_OUTSIDE_FRAME: 1, UNREADABLE_VIDEO: 1}
        assert cache.rows["record"].tolist() == [1, 2, 3, 6]
    lines = (built.folder / "skipped.jsonl").read_text(encoding="utf-8").splitlines()
    assert sorted((json.loads(line) for line in lines), key=lambda e: e["record"]) == expected


def test_a_cache_without_skips_writes_no_skipped_file(video_records, tmp_path: Path) -> None:
    cache = build_crop_cache(video_records[:3], tmp_path, SIZE, backend="pyav")
    assert cache.stats.skipped_records == [] and not (cache.folder / "skipped.jsonl").exists()


def test_a_failed_build_leaves_no_cache_and_the_next_build_succeeds(video_records, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(crop_cache, "record_table", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        build_crop_cache(video_records[:5], tmp_path, SIZE, backend="pyav")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert build_crop_cache(video_records[:5], tmp_path, SIZE, backend="pyav").status == "built"


def test_no_decodable_record_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "junk.jpg").write_bytes(b"junk")
    with pytest.raises(ValueError, match="none of the 1 records decoded"):
        build_crop_cache([CropRecord(str(tmp_path / "junk.jpg"), -1, WHOLE_IMAGE, 0)], tmp_path / "c", SIZE)


def test_other_ranks_wait_for_rank_zero_without_a_process_group(video_records, tmp_path, monkeypatch):
    records = video_records[:3]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TimeoutError, match="not built by rank 0"):
        build_crop_cache(records, tmp_path, SIZE, backend="pyav", wait_timeout_s=0.3, poll_s=0.1)
    monkeypatch.setenv("RANK", "0")
    built = build_crop_cache(records, tmp_path, SIZE, backend="pyav")
    monkeypatch.setenv("RANK", "1")
    opened = build_crop_cache(records, tmp_path, SIZE, backend="pyav", wait_timeout_s=0.3)
    assert (built.status, opened.status) == ("built", "opened") and opened.folder == built.folder


def _rank_main(rank: int, port: int, records: list[CropRecord], cache_dir: str, out: str) -> None:
    import torch.distributed as torch_dist

    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        cache = build_crop_cache(records, cache_dir, SIZE, backend="pyav")
        np.save(f"{out}/rank{rank}_{cache.status}.npy", np.asarray(cache.crops))
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.multiproc
def test_two_ranks_in_a_process_group_build_once_and_read_the_same_crops(
    corpus: Path, tmp_path: Path, free_port: int
) -> None:
    records = load_manifest("market", corpus / "market").records[:8]
    context = multiprocessing.get_context("fork")  # no re-import of torch: seconds, not tens
    port = free_port
    ranks = [
        context.Process(target=_rank_main, args=(rank, port, records, str(tmp_path / "c"), str(tmp_path)))
        for rank in range(2)
    ]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=HANG_GUARD_S)  # a guard against a hang, not a clock on the outcome
    assert [process.exitcode for process in ranks] == [0, 0]
    built, opened = np.load(tmp_path / "rank0_built.npy"), np.load(tmp_path / "rank1_opened.npy")
    assert built.shape == (8, *SIZE, 3) and np.array_equal(built, opened)
    assert len([p for p in (tmp_path / "c").iterdir()]) == 1


# ---- the dataset -----------------------------------------------------------------------------------------


def test_items_are_torchvision_normalised_crops_flipped_by_torch_draws(corpus: Path, tmp_path: Path) -> None:
    records = load_manifest("market", corpus / "market").records[:6]
    cache = build_crop_cache(records, tmp_path, SIZE)
    normalise = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = PretrainImageSet(cache, flip_prob=0.5)
    torch.manual_seed(7)
    flips = [bool(torch.rand(1) < 0.5) for _ in range(len(records))]
    assert 0 < sum(flips) < len(flips)
    torch.manual_seed(7)
    for index, rec in enumerate(records):
        item = dataset[index]
        truth = normalise(Image.fromarray(np.asarray(cache.crops[index])))
        assert torch.allclose(dataset.test_view(index), truth, atol=1e-6)
        assert torch.allclose(item["image"], truth.flip(-1) if flips[index] else truth, atol=1e-6)
        assert (item["index"], item["camid"], item["pid"]) == (index, rec.camera, rec.pid)
    assert dataset.cameras.tolist() == [r.camera for r in records] and dataset.cameras.dtype == torch.int64
    assert dataset.pids.tolist() == [r.pid for r in records] and dataset.num_images == len(dataset) == 6
    plain = dataset.without_augmentation()
    assert all(torch.equal(plain[i]["image"], dataset.test_view(i)) for i in range(6))
    assert dataset.view_spec == flip_only(SIZE, flip_p=0.5)  # the views' flip recipe at the cache's size


def test_dataset_pickles_without_copying_the_crops(corpus: Path, tmp_path: Path) -> None:
    import pickle

    cache = build_crop_cache(load_manifest("market", corpus / "market").records[:4], tmp_path, SIZE)
    dataset = PretrainImageSet(cache, flip_prob=0.0)
    dataset[0]  # opens the memmap
    blob = pickle.dumps(dataset)
    assert len(blob) < cache.crops.nbytes
    assert torch.equal(pickle.loads(blob)[3]["image"], dataset[3]["image"])


# ---- the sampler -----------------------------------------------------------------------------------------


def test_sampler_each_index_once_per_epoch_over_two_ranks_with_equal_batch_counts() -> None:
    num, batch = 103, 5  # 20 global batches of 5 → 10 per rank, 3 images dropped
    epochs = []
    for epoch in range(2):
        per_rank = []
        for rank in range(2):
            sampler = pretrain_batch_sampler(num, batch, seed=11, rank=rank, world_size=2)
            sampler.set_epoch(epoch)
            per_rank.append([index for b in sampler for index in b])
            assert len(sampler) == 10 and all(len(b) == batch for b in sampler)
        assert not set(per_rank[0]) & set(per_rank[1])
        seen = per_rank[0] + per_rank[1]
        assert len(seen) == len(set(seen)) == 100 and set(seen) <= set(range(num))
        epochs.append(seen)
    assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])


def test_sampler_resumes_mid_epoch_with_the_same_remaining_batches() -> None:
    sampler = pretrain_batch_sampler(50, 4, seed=3, rank=1, world_size=2)
    sampler.set_epoch(2)
    batches = iter(sampler)
    consumed = [next(batches) for _ in range(2)]
    state = sampler.state_dict()
    remaining = list(batches)
    resumed = pretrain_batch_sampler(50, 4, seed=3, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert list(resumed) == remaining and len(consumed) + len(remaining) == len(sampler) == 6


def test_sampler_needs_one_global_batch() -> None:
    with pytest.raises(ValueError, match="num_images=7"):
        pretrain_batch_sampler(7, 4, rank=0, world_size=2)
    with pytest.raises(ValueError, match="batch_per_rank"):
        pretrain_batch_sampler(7, 0, rank=0, world_size=1)


# ---- config and the whole build --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", "videos"),
        ("path", ""),
        ("manifest_options", {"stride": 2}),
        ("manifest_options", ["strict"]),
        ("frame_stride", 0),
        ("max_per_tracklet", -1),
        ("cache_dir", ""),
        ("decode_backend", "nvdec"),
        ("decode_device", "cuda"),
        ("flip_prob", 1.5),
        ("num_workers", -1),
    ],
)
def test_bad_config_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"pretrain_data\.{field}"):
        PretrainDataConfig(**{field: value})


def test_build_pretrain_set_from_video_then_reuse(corpus: Path, tmp_path: Path) -> None:
    config = PretrainDataConfig(
        path=str(corpus),
        frame_stride=8,
        max_per_tracklet=3,
        cache_dir=str(tmp_path),
        decode_backend="pyav",
        flip_prob=0.0,
    )
    dataset, sampler = build_pretrain_set(config, SIZE, batch_per_rank=4, seed=0, rank=0, world_size=1)
    records = select_records(load_manifest("video_tracklets", corpus), 8, 3)
    assert dataset.num_images == len(records) and " built at " in dataset.summary
    assert dataset.pids.tolist() == [r.pid for r in records]
    assert len(sampler) == len(records) // 4
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    first = next(iter(loader))
    assert first["image"].shape == (4, 3, *SIZE) and first["index"].tolist() == next(iter(sampler))
    again, _ = build_pretrain_set(config, SIZE, batch_per_rank=4, seed=0, rank=0, world_size=1)
    assert " reused at " in again.summary and again.cache.folder == dataset.cache.folder
    manifest = load_manifest("video_tracklets", corpus)
    for built in (dataset, again, again.without_augmentation()):
        assert built.skipped == {"reader": manifest.skipped, "decode": {}} and built.skipped_entries == []


def test_the_readers_skips_are_named_beside_the_decoders(corpus: Path, tmp_path: Path) -> None:
    """A corrupt tracklet line read with ``strict: false`` is counted and named (stage "reader", its file and
    line) in the set's ``skipped`` / ``skipped_entries``, which a training run writes to results.json and
    skipped.jsonl."""
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy, ignore=shutil.ignore_patterns("market"))
    tracklets = sorted((copy / "tracklets").glob("*.txt"))[0]
    line = len(tracklets.read_text().splitlines()) + 1
    with tracklets.open("a") as handle:
        handle.write("7,not-a-track,1,1,5,5\n")
    config = PretrainDataConfig(
        path=str(copy), frame_stride=8, max_per_tracklet=1, cache_dir=str(tmp_path / "cache"),
        decode_backend="pyav", manifest_options={"strict": False},
    )  # fmt: skip
    dataset, _ = build_pretrain_set(config, SIZE, batch_per_rank=4, seed=0, rank=0, world_size=1)
    assert dataset.skipped["reader"].get("malformed_line") == 1 and dataset.skipped["decode"] == {}
    assert dataset.skipped_entries == [
        {"stage": "reader", "file": str(tracklets), "record": line, "reason": "malformed_line"}
    ]


def test_the_default_cache_dir_is_the_one_given_never_the_corpus(corpus: Path, tmp_path: Path) -> None:
    market = tmp_path / "market"
    shutil.copytree(corpus / "market" / "bounding_box_train", market / "bounding_box_train")
    config = PretrainDataConfig(source="market", path=str(market), frame_stride=1)
    root = tmp_path / "runs" / "crop_caches"
    dataset, _ = build_pretrain_set(config, (16, 8), batch_per_rank=2, rank=0, world_size=1, cache_root=root)
    assert dataset.cache.folder.parent == root
    assert sorted(path.name for path in market.iterdir()) == ["bounding_box_train"]  # nothing written there
    assert open_crop_cache(dataset.cache.folder).num_rows == dataset.num_images
    with pytest.raises(ValueError, match=r"pretrain_data\.cache_dir is null and no default folder was given"):
        build_pretrain_set(config, (16, 8), batch_per_rank=2, rank=0, world_size=1)


# ---- from a shard set ------------------------------------------------------------------------------------


def test_a_shard_set_gives_the_same_images_as_the_crop_cache_after_one_jpeg_pass(
    corpus: Path, tmp_path: Path
) -> None:
    """Packed at the training size from the same decoders, the shard set selects the same records and each
    image is the crop cache's crop after one JPEG encode/decode (exactly: both sides are deterministic)."""
    from reidscale.data.shards import ShardError, decode_jpeg
    from reidscale.data.shards.pack import PackSettings, encode_jpeg, pack_manifest

    manifest = load_manifest("video_tracklets", corpus)
    settings = PackSettings(size=SIZE, quality=90, records_per_shard=256, decode_backend="pyav")
    pack_manifest(manifest, tmp_path / "shards", {"kind": "video_tracklets"}, settings, log=lambda line: None)
    common = {"frame_stride": 8, "max_per_tracklet": 3, "flip_prob": 0.0, "decode_backend": "pyav"}
    cached, _ = build_pretrain_set(
        PretrainDataConfig(path=str(corpus), cache_dir=str(tmp_path / "cache"), **common),
        SIZE,
        4,
        rank=0,
        world_size=1,
    )
    packed, sampler = build_pretrain_set(
        PretrainDataConfig(source="shards", path=str(tmp_path / "shards"), **common),
        SIZE,
        4,
        rank=0,
        world_size=1,
    )
    assert packed.num_images == cached.num_images and len(sampler) == cached.num_images // 4
    assert torch.equal(packed.pids, cached.pids) and torch.equal(packed.cameras, cached.cameras)
    for index in range(packed.num_images):
        once_jpeg = decode_jpeg(encode_jpeg(cached.cache.crop(index), 90), "expected")
        assert np.array_equal(packed.cache.crop(index), once_jpeg)
        assert torch.equal(packed[index]["image"], packed.test_view(index))  # flip_prob 0
    assert packed.skipped == {"pack": {}} and packed.skipped_entries == []
    assert ": 1213 crops of 1213 records (0 left out when packed), 98 selected (stride 8" in packed.summary
    larger, _ = build_pretrain_set(
        PretrainDataConfig(source="shards", path=str(tmp_path / "shards"), **common),
        (96, 48),
        4,
        rank=0,
        world_size=1,
    )
    assert larger.test_view(0).shape == (3, 96, 48)  # stored at 64×32, resized when read
    with pytest.raises(
        ValueError, match=r"pretrain_data.manifest_options has \['strict'\], not options of the"
    ):
        PretrainDataConfig(source="shards", path="x", manifest_options={"strict": False})
    with pytest.raises(ShardError, match=r"holds no shards\.json: not a crop shard set"):
        build_pretrain_set(
            PretrainDataConfig(source="shards", path=str(corpus)), SIZE, 4, rank=0, world_size=1
        )


def test_a_damaged_jpeg_in_the_shards_becomes_the_mean_colour_and_is_named(
    corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The memory banks need full batches on every rank, so an unreadable crop is not left out: the item
    is the mean colour (zeros after normalisation) and a warning names the shard and the record."""
    from reidscale.data.shards import read_dali_index
    from reidscale.data.shards.pack import PackSettings, pack_manifest

    manifest = load_manifest("video_tracklets", corpus)
    settings = PackSettings(size=SIZE, records_per_shard=4096, decode_backend="pyav")
    pack_manifest(manifest, tmp_path / "shards", {"kind": "video_tracklets"}, settings, log=lambda line: None)
    config = PretrainDataConfig(source="shards", path=str(tmp_path / "shards"), frame_stride=1, flip_prob=0.0)
    dataset, _ = build_pretrain_set(config, SIZE, 4, rank=0, world_size=1)
    member = read_dali_index(tmp_path / "shards" / "shard-000000.idx")[7][0]
    tar = tmp_path / "shards" / "shard-000000.tar"
    raw = bytearray(tar.read_bytes())
    raw[member.offset : member.offset + 16] = b"\0" * 16
    tar.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        item = dataset[7]
    assert item["index"] == 7 and torch.equal(item["image"], torch.zeros(3, *SIZE))
    assert "image 7 replaced by the mean colour" in caplog.text
    assert "shard-000000.tar: record 0000000007: the image does not decode" in caplog.text
    assert dataset[6]["image"].abs().sum() > 0  # its neighbours are read as before


def literal_selection(tracklet, video, camera, pid, frame, frame_stride: int, max_per_tracklet: int) -> list:
    """The selection rule as written: group, order by (frame, row), every k-th, then ``spread_evenly``."""
    groups: dict[tuple, list[int]] = {}
    for row in range(len(frame)):
        key = ("t", tracklet[row]) if tracklet[row] >= 0 else ("p", video[row], camera[row], pid[row])
        groups.setdefault(key, []).append(row)
    kept = []
    for rows in groups.values():
        ordered = sorted(rows, key=lambda r: (frame[r], r))[::frame_stride]
        if max_per_tracklet:
            ordered = [ordered[i] for i in spread_evenly(len(ordered), max_per_tracklet)]
        kept.extend(ordered)
    return sorted(kept)


def test_the_vectorised_selection_is_the_rule_as_written() -> None:
    from reidscale.data.pretrain_set import select_rows

    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(0, 400))
        table = {
            "tracklet": rng.integers(-1, 15, n),  # -1: image rows grouped by (video, camera, pid)
            "video": rng.integers(0, 3, n),
            "camera": rng.integers(-1, 2, n),
            "pid": rng.integers(0, 4, n),
            "frame": rng.integers(-1, 40, n),  # repeated frames: ties broken by row
        }
        stride, cap = int(rng.integers(1, 5)), int(rng.integers(0, 6))
        got = select_rows(**table, frame_stride=stride, max_per_tracklet=cap)
        assert got.tolist() == literal_selection(*table.values(), stride, cap), (trial, stride, cap)
