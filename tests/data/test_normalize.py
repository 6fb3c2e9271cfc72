"""The one normalisation rule against torchvision's Normalize (bit for bit) and numpy's float32 formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from reidscale.data.normalize import IMAGENET_MEAN, IMAGENET_STD, NormalizeImage, normalize_image


def random_uint8(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_imagenet_statistics() -> None:
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


def test_float_image_equals_torchvision_normalize_bit_for_bit() -> None:
    image = torch.rand(3, 17, 9, generator=torch.Generator().manual_seed(1))
    theirs = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(image.clone())
    assert torch.equal(normalize_image(image), theirs)
    assert torch.equal(NormalizeImage()(image), theirs)
    other = ((0.5, 0.25, 0.1), (0.3, 0.6, 0.9))
    assert torch.equal(normalize_image(image, *other), T.Normalize(*other)(image.clone()))


def test_uint8_image_equals_to_tensor_then_normalize_and_numpy() -> None:
    pixels = random_uint8((20, 12, 3), seed=2)
    image = pixels.permute(2, 0, 1)
    theirs = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(
        Image.fromarray(pixels.numpy())
    )
    ours = normalize_image(image)
    assert ours.dtype == torch.float32 and torch.equal(ours, theirs)
    by_numpy = (pixels.numpy().astype(np.float32) / np.float32(255) - np.float32(IMAGENET_MEAN)) / np.float32(
        IMAGENET_STD
    )
    assert torch.equal(ours, torch.from_numpy(by_numpy).permute(2, 0, 1))


def test_batches_other_dtypes_and_the_input_is_kept() -> None:
    batch = random_uint8((4, 3, 6, 5), seed=3)
    per_image = torch.stack([normalize_image(image) for image in batch])
    assert torch.equal(normalize_image(batch), per_image)
    double = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    kept = double.clone()
    out = normalize_image(double)
    assert out.dtype == torch.float64 and torch.equal(double, kept)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    assert torch.equal(out, (kept - mean) / std)


def test_bad_input_names_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"image must be \[\.\.\., C, H, W\]"):
        normalize_image(torch.zeros(4, 6, 5))
    with pytest.raises(ValueError, match="uint8 or floating point"):
        normalize_image(torch.zeros(3, 2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="std must be non-zero"):
        normalize_image(torch.zeros(3, 2, 2), std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="std > 0"):
        NormalizeImage(std=(0.2, 0.2))
