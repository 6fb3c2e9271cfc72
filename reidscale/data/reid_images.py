"""Labelled person images of a ReID benchmark for supervised training and feature extraction.

The record lists come from the benchmark readers (``reidscale.data.datasets.load_dataset``: train
pids relabelled 0..n−1, camids 0-based); images are decoded with PIL and transformed with torchvision.

Training transform (BoT): resize to H×W (bilinear), random horizontal flip, zero-pad by ``pad`` pixels and
random-crop back to H×W, ToTensor, normalise with the ImageNet mean/std, random erasing (area 2–40 %, aspect
0.3–3.3) filled with 0, which after normalisation is the ImageNet mean colour. Test transform: resize,
ToTensor, normalise.

Batches: ``pk_batch_sampler`` = the identity sampler (``reidscale.data.sampler``) with identities' images
in random order: P identities × K images, seeded, a deterministic plan per epoch, a resumable position.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from reidscale.data.datasets import ImageRecord, load_dataset
from reidscale.data.normalize import NormalizeImage
from reidscale.data.sampler import IdentitySampler
from reidscale.utils.dist import get_rank, get_world_size

ERASING_SCALE: tuple[float, float] = (0.02, 0.4)
ERASING_RATIO: tuple[float, float] = (0.3, 3.3)


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got height={height}, width={width}")


def build_test_transform(height: int = 256, width: int = 128) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image → normalised float tensor [3, height, width] (resize, ToTensor, ImageNet normalise)."""
    _check_size(height, width)
    return T.Compose(
        [
            T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR),
            T.ToTensor(),
            NormalizeImage(),
        ]
    )


def build_train_transform(
    height: int = 256,
    width: int = 128,
    flip_prob: float = 0.5,
    pad: int = 10,
    erasing_prob: float = 0.5,
) -> Callable[[Image.Image], torch.Tensor]:
    """The BoT training augmentations (module docstring): PIL RGB image → float tensor [3, height, width].

    ``flip_prob`` / ``erasing_prob`` = 0 and ``pad`` = 0 switch the flip, the pad+crop and the erasing off.
    Randomness comes from torch's global generator (per DataLoader worker: seeded by the DataLoader).
    """
    _check_size(height, width)
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    if not 0.0 <= erasing_prob <= 1.0:
        raise ValueError(f"erasing_prob must be in [0, 1], got {erasing_prob}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    steps: list[Any] = [T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR)]
    if flip_prob > 0:
        steps.append(T.RandomHorizontalFlip(p=flip_prob))
    if pad > 0:
        steps += [T.Pad(pad, fill=0), T.RandomCrop((height, width))]
    steps += [T.ToTensor(), NormalizeImage()]
    if erasing_prob > 0:
        steps.append(T.RandomErasing(p=erasing_prob, scale=ERASING_SCALE, ratio=ERASING_RATIO, value=0))
    return T.Compose(steps)


class ReidImageDataset(Dataset):
    """Images of ``records``; item ``i`` is a dict

    ``{"image": transform(PIL RGB image) e.g. [3, H, W], "pid": int, "camid": int, "index": i}``

    which the default collate turns into ``{"image": [B, 3, H, W], "pid": [B], "camid": [B], "index": [B]}``.
    """

    def __init__(
        self, records: Sequence[ImageRecord], transform: Callable[[Image.Image], torch.Tensor]
    ) -> None:
        if len(records) == 0:
            raise ValueError("records is empty: a ReidImageDataset needs at least one image")
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    @property
    def pids(self) -> list[int]:
        return [record.pid for record in self.records]

    @property
    def paths(self) -> list[str]:
        return [record.path for record in self.records]

    @property
    def num_pids(self) -> int:
        return len(set(self.pids))

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        with Image.open(record.path) as image:
            rgb = image.convert("RGB")
        return {"image": self.transform(rgb), "pid": record.pid, "camid": record.camid, "index": index}


def load_split(
    name: str,
    root: str | os.PathLike,
    split: str,
    transform: Callable[[Image.Image], torch.Tensor],
    **options: object,
) -> ReidImageDataset:
    """``split`` ("train", "query" or "gallery") of benchmark ``name`` at ``root`` as a ReidImageDataset.

    Train pids are 0..num_train_pids−1 (class labels); query/gallery pids are the original identities.
    """
    return ReidImageDataset(load_dataset(name, root, **options).subset(split), transform)


def pk_batch_sampler(
    pids: Sequence[int],
    ids_per_batch: int,
    images_per_id: int,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
) -> IdentitySampler:
    """PK batches: each rank gets ``ids_per_batch / world_size`` distinct identities × ``images_per_id``
    images per step (so ``ids_per_batch`` × K images per global step), drawn at random within identity.

    ``pids``: [N] class label of each dataset index. Call ``set_epoch`` before every epoch; ``state_dict``
    / ``load_state_dict`` resume mid-epoch. Identities with fewer than K images are topped up by repeats.
    """
    world = get_world_size() if world_size is None else int(world_size)
    if images_per_id < 1:
        raise ValueError(f"images_per_id must be >= 1, got {images_per_id}")
    if world < 1 or ids_per_batch < 1 or ids_per_batch % world:
        raise ValueError(
            f"ids_per_batch must be a positive multiple of the world size {world}, got {ids_per_batch}"
        )
    return IdentitySampler(
        pids,
        batch_size=ids_per_batch // world * images_per_id,
        k_schedule=images_per_id,
        rank=get_rank() if rank is None else rank,
        world_size=world,
        seed=seed,
        drop_last=True,
        order_within_identity="random",
    )
