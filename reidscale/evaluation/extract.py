"""Feature extraction: a feature model over a benchmark's query and gallery images → a FeatureSet / the
features file that ``reidscale evaluate`` reads (``reidscale.evaluation.features``).

The model runs in eval mode under ``torch.inference_mode`` (its previous train/eval mode is restored);
with ``flip=True`` each feature is the mean of the features of the image and of its horizontal mirror.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from reidscale.data.datasets import ImageRecord, ReidDataset, load_dataset
from reidscale.data.reid_images import ReidImageDataset, build_test_transform
from reidscale.evaluation.features import FeatureSet, save_feature_file


def embed_records(
    model: nn.Module,
    records: list[ImageRecord],
    batch_size: int,
    device: str | torch.device,
    *,
    height: int = 256,
    width: int = 128,
    flip: bool = False,
    num_workers: int = 0,
) -> torch.Tensor:
    """Features of ``records`` in order: float32 [N, D] on the CPU (model: [B, 3, H, W] → [B, D]).

    Images are cast to the dtype of the model's first floating parameter (e.g. bf16 weights, bf16 input).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    device = torch.device(device)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    dataset = ReidImageDataset(records, build_test_transform(height, width))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.inference_mode():
            for batch in loader:
                images = batch["image"].to(device=device, dtype=dtype)
                feats = model(images).float()
                if flip:
                    feats = (feats + model(torch.flip(images, dims=[3])).float()) / 2
                if feats.dim() != 2 or feats.shape[0] != images.shape[0]:
                    raise ValueError(
                        f"model must map [B, 3, H, W] to [B, D] features, got shape {tuple(feats.shape)} "
                        f"for B={images.shape[0]}"
                    )
                chunks.append(feats.cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def extract_features(
    model: nn.Module,
    dataset_split: ReidDataset,
    batch_size: int,
    device: str | torch.device,
    *,
    height: int = 256,
    width: int = 128,
    flip: bool = False,
    num_workers: int = 0,
) -> FeatureSet:
    """Query and gallery features of ``dataset_split`` (its ``query`` and ``gallery`` records) with labels and
    image paths: query_feats [Q, D], gallery_feats [G, D] float32 on the CPU."""
    if not dataset_split.query or not dataset_split.gallery:
        raise ValueError(
            f"dataset_split {dataset_split.name!r} must have query and gallery images, got "
            f"{len(dataset_split.query)} query and {len(dataset_split.gallery)} gallery"
        )
    options = {"height": height, "width": width, "flip": flip, "num_workers": num_workers}
    query_feats = embed_records(model, dataset_split.query, batch_size, device, **options)
    gallery_feats = embed_records(model, dataset_split.gallery, batch_size, device, **options)

    def labels(records: list[ImageRecord], key: str) -> torch.Tensor:
        return torch.tensor([getattr(record, key) for record in records], dtype=torch.long)

    return FeatureSet(
        query_feats=query_feats,
        gallery_feats=gallery_feats,
        query_pids=labels(dataset_split.query, "pid"),
        query_camids=labels(dataset_split.query, "camid"),
        gallery_pids=labels(dataset_split.gallery, "pid"),
        gallery_camids=labels(dataset_split.gallery, "camid"),
        query_paths=[record.path for record in dataset_split.query],
        gallery_paths=[record.path for record in dataset_split.gallery],
    )


def extract_to_file(
    model: nn.Module,
    dataset_name: str,
    dataset_root: str | os.PathLike,
    output: str | os.PathLike,
    batch_size: int,
    device: str | torch.device,
    **options: Any,
) -> Path:
    """Read benchmark ``dataset_name`` at ``dataset_root``, extract its query/gallery features and write them
    atomically to ``output`` (.pt or .npz), the file ``reidscale evaluate --features`` reads.

    ``options``: the keyword options of :func:`extract_features` (height, width, flip, num_workers)."""
    suffix = Path(output).suffix
    if suffix not in (".pt", ".pth", ".npz"):
        raise ValueError(f"output must end in .pt, .pth or .npz (a features file), got {os.fspath(output)!r}")
    features = extract_features(
        model, load_dataset(dataset_name, dataset_root), batch_size, device, **options
    )
    return save_feature_file(output, features)
