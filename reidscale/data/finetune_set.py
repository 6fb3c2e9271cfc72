"""The training set of supervised fine-tuning: a benchmark's train split with the BoT augmentations and this
rank's PK batch sampler (``reid_images`` holds the pieces).

``finetune_train_data(config, image_size, seed, rank, world_size)`` reads the options below from ``config``
(the ``finetune`` section); the input size is the model's (``model.img_size``); use the pair as
``DataLoader(dataset, batch_sampler=sampler)`` and call ``sampler.set_epoch(e)`` before each epoch.
"""

from __future__ import annotations

from typing import Protocol

from reidscale.data.reid_images import ReidImageDataset, build_train_transform, load_split, pk_batch_sampler
from reidscale.data.sampler import IdentitySampler


class FinetuneDataOptions(Protocol):
    """The data options of fine-tuning (the attributes ``FinetuneConfig`` carries)."""

    dataset: str
    dataset_root: str
    ids_per_batch: int
    images_per_id: int
    hflip: bool
    pad: int
    random_erasing: float


def finetune_train_data(
    config: FinetuneDataOptions,
    image_size: tuple[int, int],
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
) -> tuple[ReidImageDataset, IdentitySampler]:
    """The training images of ``config.dataset`` with the BoT augmentations, and this rank's PK sampler
    (``DataLoader(dataset, batch_sampler=sampler)``; ``sampler.set_epoch(e)`` before each epoch).

    Each batch collates to ``{"image": [ids_per_batch / world × images_per_id, 3, height, width], "pid":
    [...], "camid": [...], "index": [...]}`` with ``(height, width) = image_size``.
    """
    transform = build_train_transform(
        image_size[0],
        image_size[1],
        flip_prob=0.5 if config.hflip else 0.0,
        pad=config.pad,
        erasing_prob=config.random_erasing,
    )
    dataset = load_split(config.dataset, config.dataset_root, "train", transform)
    sampler = pk_batch_sampler(
        dataset.pids, config.ids_per_batch, config.images_per_id, seed, rank=rank, world_size=world_size
    )
    return dataset, sampler
