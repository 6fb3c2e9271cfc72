"""``finetune_train_data``: the train split of the benchmark with the configured augmentations and this
rank's PK batches, checked against the records read directly and against P × K counted by hand."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torchvision import transforms as T

from reidscale.data.datasets import load_dataset
from reidscale.data.finetune_set import finetune_train_data
from reidscale.data.normalize import NormalizeImage
from reidscale.methods.finetuning import FinetuneConfig
from tests.support.tiny_market import write_tiny_market


def test_train_split_and_pk_batches(tmp_path: Path) -> None:
    write_tiny_market(tmp_path, num_train=8, num_test=2, train_per_cam=3)
    config = FinetuneConfig(dataset_root=str(tmp_path), ids_per_batch=4, images_per_id=3, pad=2)
    dataset, sampler = finetune_train_data(config, (32, 16), seed=5, rank=1, world_size=2)
    assert dataset.records == load_dataset("market1501", tmp_path).train
    assert dataset.num_pids == 8 and len(dataset) == 8 * 6
    sampler.set_epoch(0)
    batches = list(sampler)
    assert batches and all(len(batch) == 2 * 3 for batch in batches)  # 4 ids / 2 ranks × K = 3
    for batch in batches:
        assert sorted(Counter(dataset.pids[i] for i in batch).values()) == [3, 3]
    steps = [type(step) for step in dataset.transform.transforms]
    assert steps == [
        T.Resize,
        T.RandomHorizontalFlip,
        T.Pad,
        T.RandomCrop,
        T.ToTensor,
        NormalizeImage,
        T.RandomErasing,
    ]
    assert dataset[0]["image"].shape == (3, 32, 16)
    other_rank = finetune_train_data(config, (32, 16), seed=5, rank=0, world_size=2)[1]
    sampler_again = finetune_train_data(config, (32, 16), seed=5, rank=1, world_size=2)[1]
    sampler_again.set_epoch(0)
    other_rank.set_epoch(0)
    assert list(sampler_again) == batches and list(other_rank) != batches


def test_switches_turn_the_augmentations_off(tmp_path: Path) -> None:
    write_tiny_market(tmp_path, num_train=4, num_test=2)
    config = FinetuneConfig(
        dataset_root=str(tmp_path),
        ids_per_batch=2,
        images_per_id=2,
        hflip=False,
        pad=0,
        random_erasing=0.0,
    )
    dataset, _ = finetune_train_data(config, (24, 12), rank=0, world_size=1)
    steps = [type(step) for step in dataset.transform.transforms]
    assert steps == [T.Resize, T.ToTensor, NormalizeImage]
    torch.manual_seed(0)
    first = dataset[3]["image"]
    torch.manual_seed(1)
    assert torch.equal(first, dataset[3]["image"])  # nothing random left
