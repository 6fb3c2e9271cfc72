"""DINO-style multi-crop forward: one backbone call per run of consecutive crops of the same resolution.

Multi-crop methods (CION, DINO) feed a list of crop batches of different sizes, e.g. 2 global
[B, 3, 256, 128] and n local [B, 3, 128, 64] batches. ``MultiCropWrapper`` concatenates each run of
consecutive same-resolution batches along the batch, runs the backbone once per run, then applies the head
(if any) once to all features together, and returns them in input order::

    crops [B, 3, H_i, W_i] × V ──► runs of equal (H, W) ──► backbone(cat(run)) per run ──► cat ──► head
                                                                                          [V·B, D]

``split_crops(features, num_crops)`` cuts the output back into one [B, D] tensor per crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def resolution_runs(crops: Sequence[Tensor]) -> list[tuple[int, int]]:
    """``(start, stop)`` crop-index ranges of consecutive crops with the same (H, W), in input order.

    E.g. sizes [G, G, L, L, L, G] → [(0, 2), (2, 5), (5, 6)].
    """
    runs: list[tuple[int, int]] = []
    for index, crop in enumerate(crops):
        if runs and crops[runs[-1][0]].shape[-2:] == crop.shape[-2:]:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


def check_crops(crops: Sequence[Tensor] | Tensor) -> list[Tensor]:
    """``crops`` as a list of [B, C, H, W] tensors of one batch size B (a single tensor is one crop);
    ValueError naming ``crops`` and what was expected otherwise."""
    if isinstance(crops, Tensor):
        crops = [crops]
    if not isinstance(crops, Sequence) or len(crops) == 0:
        raise ValueError(f"crops must be a non-empty list of [B, C, H, W] tensors, got {crops!r}")
    crop_list = list(crops)
    for index, crop in enumerate(crop_list):
        if not isinstance(crop, Tensor) or crop.dim() != 4:
            shape = tuple(crop.shape) if isinstance(crop, Tensor) else type(crop).__name__
            raise ValueError(f"crops[{index}] must be a [B, C, H, W] tensor, got {shape}")
    batch, channels = crop_list[0].shape[:2]
    for index, crop in enumerate(crop_list):
        if crop.shape[:2] != (batch, channels):
            raise ValueError(
                f"crops must share batch size and channels (crops[0] is [{batch}, {channels}, ...]), "
                f"got crops[{index}] of shape {tuple(crop.shape)}"
            )
    return crop_list


def split_crops(features: Tensor, num_crops: int) -> list[Tensor]:
    """``features`` [V·B, ...] of V = ``num_crops`` crops (input order) → V tensors [B, ...]."""
    if num_crops < 1 or features.shape[0] % num_crops:
        raise ValueError(
            f"num_crops must be >= 1 and divide features.shape[0] = {features.shape[0]}, got {num_crops}"
        )
    return list(features.split(features.shape[0] // num_crops))


class MultiCropWrapper(nn.Module):
    """``backbone`` (and optionally ``head``) over a list of crop batches; see the module docstring.

    ``forward(crops)``: V tensors [B, 3, H_i, W_i] (same B; sizes may differ between crops) → [V·B, D],
    the features of crop 0's B images first, then crop 1's, and so on; D is the head's output width (the
    backbone's when ``head`` is None). The backbone runs once per run of consecutive equal-size crops, so
    BatchNorm statistics in training mode are taken over each run, as in DINO.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        if head is not None and not isinstance(head, nn.Module):
            raise ValueError(f"head must be an nn.Module or None, got {type(head).__name__}")
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()  # None: the features are the output

    def backbone_features(self, crops: Sequence[Tensor] | Tensor) -> Tensor:
        """The backbone's features of every crop, before the head: [V·B, C] in input order."""
        crop_list = check_crops(crops)
        parts = []
        for start, stop in resolution_runs(crop_list):
            batch = crop_list[start] if stop - start == 1 else torch.cat(crop_list[start:stop])
            features = self.backbone(batch)
            if not isinstance(features, Tensor) or features.shape[0] != batch.shape[0]:
                shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
                raise ValueError(
                    f"backbone must map [N, C, H, W] to a tensor [N, ...], got {shape} for N={batch.shape[0]}"
                )
            parts.append(features)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def forward(self, crops: Sequence[Tensor] | Tensor) -> Tensor:
        """V crop batches [B, 3, H_i, W_i] → head(backbone features) [V·B, D], in input order."""
        return self.head(self.backbone_features(crops))
