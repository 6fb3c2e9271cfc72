"""Global pooling of a feature map [B, C, h, w] into a vector [B, C]: average, max or GeM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOLINGS = ("avg", "max", "gem")


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling (Radenović et al. 2018): ``(mean(clamp(x, eps) ** p)) ** (1 / p)`` per channel.

    p = 1 is average pooling; p → ∞ tends to max pooling. ``p`` is a learnable scalar unless
    ``learnable=False``. Inputs are clamped to ``eps`` so that fractional powers stay real.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        if not p > 0:
            raise ValueError(f"GeM p must be > 0, got {p}")
        if not eps > 0:
            raise ValueError(f"GeM eps must be > 0, got {eps}")
        self.eps = eps
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)

    def forward(self, features: Tensor) -> Tensor:
        """[B, C, h, w] → [B, C]."""
        powered = features.clamp(min=self.eps).pow(self.p)
        return powered.mean(dim=(-2, -1)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4g}, eps={self.eps}, learnable={self.p.requires_grad}"


class GlobalPool(nn.Module):
    """Average or max over the spatial dimensions: [B, C, h, w] → [B, C]."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"GlobalPool mode must be 'avg' or 'max', got {mode!r}")
        self.mode = mode

    def forward(self, features: Tensor) -> Tensor:
        """[B, C, h, w] → [B, C]."""
        if self.mode == "avg":
            return features.mean(dim=(-2, -1))
        return F.adaptive_max_pool2d(features, 1).flatten(1)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


def build_pooling(pooling: str, gem_p: float = 3.0) -> nn.Module:
    """The pooling module for ``pooling`` in ``POOLINGS`` (``gem_p``: the initial GeM exponent)."""
    if pooling == "gem":
        return GeneralizedMeanPooling(p=gem_p)
    if pooling in ("avg", "max"):
        return GlobalPool(pooling)
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
