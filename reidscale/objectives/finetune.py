"""Supervised fine-tuning, the BoT recipe (Luo et al. 2019; docs/methods.md): BNNeck, label-smoothed
cross-entropy on the post-BNNeck feature, soft-margin batch-hard triplet on the pre-BNNeck feature.

    images [B, 3, H, W] → backbone → f [B, C] ──────────────── triplet(f, pids)
                                     └→ BatchNorm1d (bias frozen at 0) → bias-free Linear → CE(·, pids)

The test feature is ``f``, before the BNNeck (``feature_model()`` is the backbone).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from reidscale.objectives.base import Objective, StepOutput
from reidscale.objectives.losses import TRIPLET_MODES, batch_hard_triplet, cross_entropy_label_smooth
from reidscale.utils.options import option


@dataclass
class BotConfig:
    """The BoT losses (``bot`` section of ``reidscale finetune``): cross-entropy and triplet settings."""

    ce_weight: float = option(1.0, "weight of the label-smoothed cross-entropy (post-BNNeck feature)")
    triplet_weight: float = option(1.0, "weight of the batch-hard triplet loss (pre-BNNeck feature)")
    label_smoothing: float = option(0.1, "ε of the label-smoothed cross-entropy (0 = plain CE)")
    triplet_mode: Literal["soft", "hard"] = option(
        "soft", "soft = softplus(d_ap − d_an); hard = max(0, d_ap − d_an + triplet_margin)"
    )
    triplet_margin: float = option(0.3, "margin of the hard-margin triplet (unused by the soft margin)")

    def __post_init__(self) -> None:
        try:
            check_loss_settings(
                self.ce_weight,
                self.triplet_weight,
                self.label_smoothing,
                self.triplet_mode,
                self.triplet_margin,
            )
        except ValueError as err:
            raise ValueError(f"bot: {err}") from None


def check_loss_settings(
    ce_weight: float, triplet_weight: float, label_smoothing: float, triplet_mode: str, triplet_margin: float
) -> None:
    """ValueError naming the first loss setting out of range."""
    if ce_weight < 0 or triplet_weight < 0:
        raise ValueError(f"ce_weight and triplet_weight must be >= 0, got {ce_weight} and {triplet_weight}")
    if ce_weight == 0 and triplet_weight == 0:
        raise ValueError("ce_weight and triplet_weight are both 0: at least one loss must be on")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if triplet_mode not in TRIPLET_MODES:
        raise ValueError(f"triplet_mode must be one of {TRIPLET_MODES}, got {triplet_mode!r}")
    if triplet_margin < 0:
        raise ValueError(f"triplet_margin must be >= 0, got {triplet_margin}")


def backbone_feature_dim(backbone: nn.Module) -> int:
    """The backbone's ``feature_dim`` (a positive int attribute); ValueError otherwise."""
    dim = getattr(backbone, "feature_dim", None)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(
            f"backbone must have a positive int attribute feature_dim (its output width C), "
            f"got {type(backbone).__name__}.feature_dim = {dim!r}"
        )
    return dim


class FinetuneObjective(Objective):
    """BNNeck + label-smoothed CE + batch-hard triplet over a backbone mapping [B, 3, H, W] → [B, C].

    ``forward(batch)`` takes a mapping with ``"image"`` [B, 3, H, W] and ``"pid"`` [B] (0..num_classes−1),
    as ``ReidImageDataset`` items collate to, and logs the unweighted parts ``"ce"`` and ``"triplet"``
    (a part whose weight is 0 is not computed).
    """

    name = "finetune"

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        ce_weight: float = 1.0,
        triplet_weight: float = 1.0,
        label_smoothing: float = 0.1,
        triplet_mode: Literal["soft", "hard"] = "soft",
        triplet_margin: float = 0.3,
    ) -> None:
        super().__init__()
        feature_dim = backbone_feature_dim(backbone)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (training identities), got {num_classes!r}")
        check_loss_settings(ce_weight, triplet_weight, label_smoothing, triplet_mode, triplet_margin)
        self.backbone = backbone
        self.num_classes = num_classes
        self.ce_weight, self.triplet_weight = float(ce_weight), float(triplet_weight)
        self.label_smoothing = float(label_smoothing)
        self.triplet_mode, self.triplet_margin = triplet_mode, float(triplet_margin)
        self.bnneck = nn.BatchNorm1d(feature_dim)
        nn.init.ones_(self.bnneck.weight)
        nn.init.zeros_(self.bnneck.bias)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(feature_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    @classmethod
    def from_config(cls, backbone: nn.Module, num_classes: int, config: BotConfig) -> FinetuneObjective:
        """The objective with the loss settings of ``config``."""
        return cls(
            backbone,
            num_classes,
            ce_weight=config.ce_weight,
            triplet_weight=config.triplet_weight,
            label_smoothing=config.label_smoothing,
            triplet_mode=config.triplet_mode,
            triplet_margin=config.triplet_margin,
        )

    def logits(self, feats: Tensor) -> Tensor:
        """Class scores classifier(bnneck(feats)) of pre-BNNeck features.  [B, C] → [B, num_classes]."""
        return self.classifier(self.bnneck(feats))

    def forward(self, batch: Mapping[str, Any]) -> StepOutput:
        images, pids = _unpack_batch(batch)
        feats = self.backbone(images)
        if feats.dim() != 2 or feats.shape != (images.shape[0], self.bnneck.num_features):
            raise ValueError(
                f"backbone output must be [B, feature_dim] = "
                f"[{images.shape[0]}, {self.bnneck.num_features}], got shape {tuple(feats.shape)}"
            )
        parts: dict[str, Tensor] = {}
        loss = feats.new_zeros((), dtype=torch.float32)
        if self.ce_weight > 0:
            parts["ce"] = cross_entropy_label_smooth(self.logits(feats), pids, self.label_smoothing)
            loss = loss + self.ce_weight * parts["ce"]
        if self.triplet_weight > 0:
            parts["triplet"] = batch_hard_triplet(feats, pids, self.triplet_mode, self.triplet_margin)
            loss = loss + self.triplet_weight * parts["triplet"]
        return StepOutput(loss=loss, parts=parts, num_images=int(images.shape[0]))

    def feature_model(self) -> nn.Module:
        """The backbone: the test feature is taken before the BNNeck."""
        return self.backbone


def _unpack_batch(batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """(images [B, 3, H, W], pids [B] int64 on the images' device) of a collated batch, or ValueError."""
    if not isinstance(batch, Mapping) or "image" not in batch or "pid" not in batch:
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"batch must be a mapping with keys 'image' and 'pid', got {keys}")
    images, pids = batch["image"], torch.as_tensor(batch["pid"])
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"batch['image'] must be a [B, 3, H, W] tensor, got {shape}")
    if pids.dim() != 1 or pids.shape[0] != images.shape[0]:
        raise ValueError(f"batch['pid'] must be [B] with B={images.shape[0]}, got shape {tuple(pids.shape)}")
    return images, pids.to(device=images.device, dtype=torch.long)
