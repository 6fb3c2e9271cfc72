"""The two-branch embedding network of selective contrastive learning (docs/methods.md).

::

    images [B, 3, H, W] → backbone map [B, C, h, w] ─┬─ pool → Linear(C → Dg) → BN → L2 = g        [B, Dg]
                                                     └─ S horizontal stripes, each avg-pooled
                                                        → Linear(C → Dl) → BN → L2 = l_1..l_S   [B, S, Dl]

``l_cat = normalise([l_1 | … | l_S])`` (= the concatenation / √S) is the local feature the loss and the
mixture bank see. Stripes come from ``adaptive_avg_pool2d(map, (S, 1))``, so a map height that S does not
divide gets overlapping stripes rather than an error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidscale.models.registry import Backbone
from reidscale.objectives.selective.config import SelectiveConfig


def local_concat(stripes: Tensor) -> Tensor:
    """[B, S, Dl] unit stripe features → l_cat [B, S·Dl], L2-normalised."""
    return F.normalize(stripes.flatten(1), dim=1)


class SelectiveNet(nn.Module):
    """Backbone + global head + S stripe heads; ``forward`` returns ``(g [B, Dg], stripes [B, S, Dl])``."""

    def __init__(self, backbone: Backbone, config: SelectiveConfig) -> None:
        super().__init__()
        if not hasattr(backbone, "feature_dim"):
            raise ValueError(f"backbone {type(backbone).__name__} has no feature_dim")
        self.backbone = backbone
        channels = backbone.feature_dim
        self.num_stripes = config.num_stripes
        self.global_fc = nn.Linear(channels, config.global_dim)
        self.global_bn = nn.BatchNorm1d(config.global_dim)
        stripes = range(config.num_stripes)
        self.local_fc = nn.ModuleList(nn.Linear(channels, config.local_dim) for _ in stripes)
        self.local_bn = nn.ModuleList(nn.BatchNorm1d(config.local_dim) for _ in stripes)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """[B, 3, H, W] → (g [B, Dg], stripes [B, S, Dl]), every vector L2-normalised."""
        fmap = self.backbone.forward_features(images)
        if fmap.dim() != 4:
            raise ValueError(
                f"selective contrastive learning needs a convolutional feature map [B, C, h, w]; "
                f"{type(self.backbone).__name__} gives shape {tuple(fmap.shape)}"
            )
        pooled = self.backbone.pool_features(fmap)
        g = F.normalize(self.global_bn(self.global_fc(pooled)), dim=1)
        stripes = F.adaptive_avg_pool2d(fmap, (self.num_stripes, 1)).flatten(2)  # [B, C, S]
        local = [
            F.normalize(bn(fc(stripes[:, :, k])), dim=1)
            for k, (fc, bn) in enumerate(zip(self.local_fc, self.local_bn, strict=True))
        ]
        return g, torch.stack(local, dim=1)


class SelectiveFeatures(nn.Module):
    """The test embedding of a :class:`SelectiveNet`: images [B, 3, H, W] → features [B, D].

    ``which``: "concat" → normalise([g | l_cat]) (D = Dg + S·Dl), "global" → g, "local" → l_cat.
    """

    def __init__(self, net: SelectiveNet, which: str) -> None:
        super().__init__()
        if which not in ("concat", "global", "local"):
            raise ValueError(f"which must be concat, global or local, got {which!r}")
        self.net, self.which = net, which

    def forward(self, images: Tensor) -> Tensor:
        g, stripes = self.net(images)
        if self.which == "global":
            return g
        l_cat = local_concat(stripes)
        if self.which == "local":
            return l_cat
        return F.normalize(torch.cat([g, l_cat], dim=1), dim=1)
