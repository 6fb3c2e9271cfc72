"""Labelled ReID images: records, decoding, BoT augmentations and PK batches, against hand-built truth."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidscale.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from reidscale.data.reid_images import (
    ReidImageDataset,
    build_test_transform,
    build_train_transform,
    load_split,
    pk_batch_sampler,
)
from tests.support.tiny_market import write_tiny_market


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[tuple[str, int, int]]]]:
    root = tmp_path_factory.mktemp("market")
    return root, write_tiny_market(root, num_train=5, num_test=3)


def manual_normalised(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """Resize with PIL (bilinear), scale to [0, 1], (x − mean) / std.  Returns [3, height, width]."""
    array = np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.float32) / 255
    array = (array - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(array).permute(2, 0, 1)


def test_train_split_records_and_relabelling(market):
    root, written = market
    dataset = load_split("market1501", root, "train", build_test_transform(32, 16))
    expected = sorted(written["bounding_box_train"])
    assert dataset.paths == [path for path, _, _ in expected]
    # original pids 1..5 relabelled in ascending order to 0..4
    assert dataset.pids == [pid - 1 for _, pid, _ in expected]
    assert dataset.num_pids == 5
    for index in (0, 7, len(dataset) - 1):
        item = dataset[index]
        assert item["pid"] == expected[index][1] - 1
        assert item["camid"] == expected[index][2]
        assert item["index"] == index
        assert item["image"].shape == (3, 32, 16)


def test_gallery_keeps_original_pids_and_drops_junk(market):
    root, written = market
    gallery = load_split("market1501", root, "gallery", build_test_transform(32, 16))
    assert sorted(
        zip(gallery.paths, gallery.pids, [r.camid for r in gallery.records], strict=True)
    ) == sorted(written["bounding_box_test"])
    assert 0 in gallery.pids and -1 not in gallery.pids


def test_test_transform_matches_manual_resize_and_normalisation(market):
    _, written = market
    path = written["query"][0][0]
    with Image.open(path) as image:
        expected = manual_normalised(image, 64, 32)
        got = build_test_transform(64, 32)(image.convert("RGB"))
    assert got.shape == (3, 64, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_flip_only_train_transform_mirrors_the_test_image(market):
    _, written = market
    with Image.open(written["query"][0][0]) as image:
        rgb = image.convert("RGB")
    base = build_test_transform(64, 32)(rgb)
    flipped = build_train_transform(64, 32, flip_prob=1.0, pad=0, erasing_prob=0.0)(rgb)
    torch.testing.assert_close(flipped, torch.flip(base, dims=[2]))


def test_pad_and_crop_is_a_window_of_the_zero_padded_image(market):
    _, written = market
    with Image.open(written["query"][0][0]) as image:
        rgb = image.convert("RGB")
    base = build_test_transform(64, 32)(rgb)
    zero = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD))[:, None, None]
    padded = zero.expand(3, 84, 52).clone()
    padded[:, 10:74, 10:42] = base
    transform = build_train_transform(64, 32, flip_prob=0.0, pad=10, erasing_prob=0.0)
    torch.manual_seed(3)
    offsets = set()
    for _ in range(6):
        crop = transform(rgb)
        assert crop.shape == (3, 64, 32)
        matches = [
            (top, left)
            for top in range(21)
            for left in range(21)
            if torch.allclose(crop, padded[:, top : top + 64, left : left + 32], atol=1e-6)
        ]
        assert len(matches) >= 1, "the crop is not a window of the padded image"
        offsets.add(matches[0])
    assert len(offsets) > 1, "six random crops all landed at the same offset"


def test_random_erasing_fills_one_rectangle_with_the_mean_colour(market):
    _, written = market
    with Image.open(written["query"][0][0]) as image:
        rgb = image.convert("RGB")
    base = build_test_transform(64, 32)(rgb)
    torch.manual_seed(0)
    erased = build_train_transform(64, 32, flip_prob=0.0, pad=0, erasing_prob=1.0)(rgb)
    changed = (erased != base).any(dim=0)
    rows, cols = changed.nonzero(as_tuple=True)
    assert rows.numel() > 0
    box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    assert torch.all(erased[:, box[0], box[1]] == 0)
    outside = torch.ones_like(changed)
    outside[box] = False
    torch.testing.assert_close(erased[:, outside], base[:, outside])
    area = changed[box].numel() / changed.numel()
    assert 0.02 <= area <= 0.4 + 1e-6


def test_pk_sampler_batches_are_p_ids_by_k_images(market):
    root, _ = market
    pids = np.array(load_split("market1501", root, "train", build_test_transform(8, 4)).pids)
    sampler = pk_batch_sampler(pids.tolist(), ids_per_batch=4, images_per_id=3, seed=1, world_size=1, rank=0)
    sampler.set_epoch(0)
    batches = list(sampler)
    assert len(batches) >= 2
    for batch in batches:
        counts = Counter(pids[batch].tolist())
        assert len(batch) == 12 and len(counts) == 4 and set(counts.values()) == {3}
        assert len(set(batch)) == 12  # 6 images per id >= K: no repeats
    again = pk_batch_sampler(pids.tolist(), 4, 3, seed=1, world_size=1, rank=0)
    again.set_epoch(0)
    assert list(again) == batches
    again.set_epoch(1)
    assert list(again) != batches


def test_pk_sampler_resumes_mid_epoch_and_splits_ids_over_ranks(market):
    root, _ = market
    pids = load_split("market1501", root, "train", build_test_transform(8, 4)).pids
    sampler = pk_batch_sampler(pids, 4, 2, seed=5, world_size=2, rank=1)
    sampler.set_epoch(2)
    full = list(sampler)
    assert all(len(batch) == 4 and len({pids[i] for i in batch}) == 2 for batch in full)
    sampler.set_epoch(2)
    iterator = iter(sampler)
    head = [next(iterator), next(iterator)]
    state = sampler.state_dict()
    resumed = pk_batch_sampler(pids, 4, 2, seed=0, world_size=2, rank=1)
    resumed.load_state_dict(state)
    assert head + list(resumed) == full


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="ids_per_batch"):
        pk_batch_sampler([0, 0, 1, 1], ids_per_batch=3, images_per_id=2, world_size=2, rank=0)
    with pytest.raises(ValueError, match="pad"):
        build_train_transform(pad=-1)
    with pytest.raises(ValueError, match="erasing_prob"):
        build_train_transform(erasing_prob=1.5)
    with pytest.raises(ValueError, match="records"):
        ReidImageDataset([], build_test_transform())
