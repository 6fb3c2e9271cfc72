"""ResNet-18/34/50/101/152 and their IBN-a variants as ReID backbones (no classifier).

Parameter names follow torchvision's ``ResNet`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer4.2.downsample.0``) so its state_dicts load directly; in the IBN-a variants the first norm of every
block of layer1–3 is an ``IBN`` module whose halves are named ``bn1.IN`` / ``bn1.BN`` as in the IBN-Net
release (Pan et al. 2018). Strides sit on the 3×3 convolutions (ResNet v1.5, as torchvision and IBN-Net).
Their ImageNet files load through ``model.weights`` once the classifier ``fc.*`` is dropped (the weights
filter registered here).

``last_stride=1`` (the ReID default) keeps layer4 at the resolution of layer3: a 256×128 image gives a
16×8 map instead of 8×4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reidscale.models.pooling import build_pooling
from reidscale.models.registry import Backbone, BackboneFactory, register_backbone
from reidscale.models.weights import register_weights_filter, split_prefix


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


class IBN(nn.Module):
    """IBN-a normalisation: InstanceNorm (affine) on the first ``channels // 2`` channels, BatchNorm on
    the rest. [B, C, h, w] → [B, C, h, w]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.half = channels // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: Tensor) -> Tensor:
        first, rest = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(first.contiguous()), self.BN(rest.contiguous())], dim=1)


def _first_norm(channels: int, ibn: bool) -> nn.Module:
    return IBN(channels) if ibn else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with an identity (or 1×1 projection) shortcut; ``expansion`` = 1."""

    expansion = 1

    def __init__(
        self, in_ch: int, width: int, stride: int = 1, downsample: nn.Module | None = None, ibn: bool = False
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, width, stride)
        self.bn1 = _first_norm(width, ibn)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (strided) → 1×1 expand, with a shortcut; ``expansion`` = 4."""

    expansion = 4

    def __init__(
        self, in_ch: int, width: int, stride: int = 1, downsample: nn.Module | None = None, ibn: bool = False
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_ch, width)
        self.bn1 = _first_norm(width, ibn)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}
"""architecture name → (block class, blocks per stage)."""


def _check_img_size(img_size: Sequence[int]) -> tuple[int, int]:
    if len(img_size) != 2 or not all(isinstance(v, int) and v > 0 for v in img_size):
        raise ValueError(f"img_size must be (height, width) with positive ints, got {img_size!r}")
    return int(img_size[0]), int(img_size[1])


class ResNet(Backbone):
    """A ResNet trunk (stem + 4 stages) and a global pooling; ``feature_dim`` = 512 × expansion.

    Args:
        arch: a key of ``ARCHS``.
        ibn: IBN-a variant (IBN as the first norm of every block in layer1–3).
        last_stride: stride of layer4, 1 (ReID) or 2 (classification).
        pooling: ``avg``, ``max`` or ``gem`` (see ``pooling.py``); ``gem_p``: initial GeM exponent.
        img_size: (height, width) the backbone is trained at (informational: the trunk takes any size).
    """

    def __init__(
        self,
        arch: str,
        ibn: bool = False,
        last_stride: int = 1,
        pooling: str = "avg",
        gem_p: float = 3.0,
        img_size: Sequence[int] = (256, 128),
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        block, depths = ARCHS[arch]
        self.img_size = _check_img_size(img_size)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._in_ch = 64
        self.layer1 = self._make_stage(block, 64, depths[0], stride=1, ibn=ibn)
        self.layer2 = self._make_stage(block, 128, depths[1], stride=2, ibn=ibn)
        self.layer3 = self._make_stage(block, 256, depths[2], stride=2, ibn=ibn)
        self.layer4 = self._make_stage(block, 512, depths[3], stride=last_stride, ibn=False)
        self.feature_dim = 512 * block.expansion
        self.pool = build_pooling(pooling, gem_p)
        self._init_weights()

    def _make_stage(
        self, block: type[BasicBlock] | type[Bottleneck], width: int, depth: int, stride: int, ibn: bool
    ) -> nn.Sequential:
        out_ch = width * block.expansion
        downsample = None
        if stride != 1 or self._in_ch != out_ch:
            downsample = nn.Sequential(_conv1x1(self._in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
        blocks = [block(self._in_ch, width, stride, downsample, ibn)]
        blocks += [block(out_ch, width, ibn=ibn) for _ in range(depth - 1)]
        self._in_ch = out_ch
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        # Norm layers start at weight 1, bias 0 (PyTorch's default), as in torchvision and IBN-Net.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] → [B, feature_dim, H/16, W/16] (last_stride 1) or [.., H/32, W/32] (2)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pool_features(self, features: Tensor) -> Tensor:
        """[B, C, h, w] → [B, C]."""
        return self.pool(features)


def _resnet_factory(arch: str, ibn: bool) -> BackboneFactory:
    def build(
        last_stride: int = 1, pooling: str = "avg", gem_p: float = 3.0, img_size: Sequence[int] = (256, 128)
    ) -> ResNet:
        return ResNet(arch, ibn=ibn, last_stride=last_stride, pooling=pooling, gem_p=gem_p, img_size=img_size)

    build.__doc__ = f"{arch}{' IBN-a' if ibn else ''} backbone (see ``ResNet`` for the arguments)."
    return build


for _arch in ARCHS:
    register_backbone(_arch)(_resnet_factory(_arch, ibn=False))
    register_backbone(f"{_arch}_ibn_a")(_resnet_factory(_arch, ibn=True))


@register_weights_filter(ResNet)
def drop_classifier(state: dict[str, Tensor], model: Backbone) -> dict[str, Tensor]:
    """torchvision's / IBN-Net's ImageNet state_dict → ours: the classifier ``fc.*`` is dropped."""
    return split_prefix(state, "fc.")[1]
