"""Image normalisation shared by every image path (benchmark images, multi-crop views, the pre-training set).

One rule, computed in float32 exactly as torchvision's ``Normalize`` does, so each path gives the same bits
as before: ``(x − mean) / std`` per channel, with x = uint8 / 255 when the input is uint8. ImageNet's
statistics are the default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize_image(
    image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Tensor:
    """``(image − mean) / std`` per channel of a float image in [0, 1]; a uint8 image is divided by 255 first.

    ``image``: [..., 3, H, W] (float or uint8) → float [..., 3, H, W] (float32 for uint8 input, else the
    input's dtype). The input is not modified.
    """
    if any(value == 0 for value in std):
        raise ValueError(f"std must be non-zero in every channel, got {tuple(std)}")
    if image.dim() < 3 or image.shape[-3] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"image must be [..., C, H, W] with C = len(mean) = len(std) = {len(mean)} and {len(std)}, "
            f"got shape {tuple(image.shape)}"
        )
    if image.dtype == torch.uint8:
        image = image.to(torch.float32) / 255.0
    elif not image.is_floating_point():
        raise ValueError(f"image must be uint8 or floating point, got {image.dtype}")
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return (image - mean_t) / std_t


class NormalizeImage:
    """``normalize_image`` as a transform step (e.g. after ``ToTensor`` in a torchvision ``Compose``)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean} and {std}")
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: Tensor) -> Tensor:
        return normalize_image(image, self.mean, self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"
