"""Multi-crop views on the CPU with torch/torchvision, on uint8 image tensors.

Each view is produced in two steps, so the distributions can be tested on parameters alone:
``sample_view_params`` draws every random choice of one view (a ``ViewParams``) from a torch.Generator,
and ``apply_view`` applies them deterministically.

Op order (the DALI path in ``dali_views`` follows it): random resized crop → colour jitter (brightness,
contrast, saturation, hue in this fixed order; torchvision's ColorJitter shuffles the order, which the
DALI operators cannot) → grayscale → Gaussian blur → solarize → horizontal flip → normalise → erase.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from reidscale.data.normalize import normalize_image
from reidscale.data.views.sampling import erase_box, sample_resized_crop
from reidscale.data.views.spec import CropSpec, MultiCropSpec

_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


@dataclass(frozen=True)
class ViewParams:
    """Every random choice of one view.

    box:        (top, left, height, width) of the crop in source pixels
    flip:       horizontal flip
    jitter:     (brightness, contrast, saturation factors, hue shift in turns), None when not jittered
    grayscale:  convert to grayscale
    blur_sigma: Gaussian blur sigma in output pixels, None when not blurred
    solarize:   invert pixels >= the group's threshold
    erase_box:  (top, left, height, width) erased in the output view, None when not erased
    """

    box: tuple[int, int, int, int]
    flip: bool
    jitter: tuple[float, float, float, float] | None
    grayscale: bool
    blur_sigma: float | None
    solarize: bool
    erase_box: tuple[int, int, int, int] | None


def _coin(probability: float, generator: torch.Generator | None) -> bool:
    return bool(torch.rand((), generator=generator).item() < probability)


def _factor(strength: float, generator: torch.Generator | None) -> float:
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    return low + (high - low) * torch.rand((), generator=generator).item()


def sample_flip(group: CropSpec, generator: torch.Generator | None = None) -> bool:
    """Whether a view of ``group`` is flipped: True with probability ``group.flip_p``, from one
    ``torch.rand`` draw of ``generator`` (torch's global generator when None)."""
    return _coin(group.flip_p, generator)


def flip_view(view: torch.Tensor) -> torch.Tensor:
    """The horizontal mirror image of ``view`` [..., H, W] (any dtype)."""
    return TF.horizontal_flip(view)


def _sample_jitter(group: CropSpec, generator: torch.Generator | None) -> tuple[float, float, float, float]:
    brightness = _factor(group.brightness, generator)
    contrast = _factor(group.contrast, generator)
    saturation = _factor(group.saturation, generator)
    hue = group.hue * (2.0 * torch.rand((), generator=generator).item() - 1.0)
    return brightness, contrast, saturation, hue


def sample_view_params(
    group: CropSpec, view_index: int, image_hw: tuple[int, int], generator: torch.Generator | None = None
) -> ViewParams:
    """Draw the parameters of view ``view_index`` of ``group`` for a source image of size ``image_hw``."""
    if group.random_crop:
        box = sample_resized_crop(image_hw, group.scale, group.ratio, generator, group.crop_attempts)
    else:
        box = (0, 0, image_hw[0], image_hw[1])
    flip = sample_flip(group, generator)
    jitter = _sample_jitter(group, generator) if _coin(group.color_jitter_p, generator) else None
    grayscale = _coin(group.grayscale_p, generator)
    blur_sigma = None
    if _coin(group.blur_prob(view_index), generator):
        low, high = group.blur_sigma
        blur_sigma = low + (high - low) * torch.rand((), generator=generator).item()
    solarize = _coin(group.solarize_prob(view_index), generator)
    erased = None
    if _coin(group.erase_p, generator):
        uniforms = tuple(torch.rand((4,), generator=generator, dtype=torch.float64).unbind())
        erased = tuple(int(v) for v in erase_box(uniforms, group.size, group.erase_scale, group.erase_ratio))
    return ViewParams(box, flip, jitter, grayscale, blur_sigma, solarize, erased)


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    kernel = 2 * math.ceil(3.0 * sigma) + 1
    largest = 2 * min(image.shape[-2:]) - 1  # reflect padding needs a pad smaller than the image
    kernel = min(kernel, largest if largest % 2 else largest - 1)
    return TF.gaussian_blur(image, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def _photometric(view: torch.Tensor, params: ViewParams, group: CropSpec) -> torch.Tensor:
    if params.jitter is not None:
        brightness, contrast, saturation, hue = params.jitter
        view = TF.adjust_brightness(view, brightness)
        view = TF.adjust_contrast(view, contrast)
        view = TF.adjust_saturation(view, saturation)
        view = TF.adjust_hue(view, hue)
    if params.grayscale:
        view = TF.rgb_to_grayscale(view, num_output_channels=3)
    if params.blur_sigma is not None:
        view = _blur(view, params.blur_sigma)
    if params.solarize:
        view = TF.solarize(view, threshold=group.solarize_threshold)
    return view


def apply_view(
    image: torch.Tensor,
    params: ViewParams,
    group: CropSpec,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Apply ``params`` to ``image`` (uint8 [3, H, W]); returns the float32 normalised view [3, h, w]."""
    top, left, height, width = params.box
    view = TF.resized_crop(
        image, top, left, height, width, list(group.size), _INTERPOLATION[group.interpolation], antialias=True
    )
    view = _photometric(view, params, group)
    if params.flip:
        view = flip_view(view)
    view = normalize_image(view, mean, std)
    if params.erase_box is not None:
        e_top, e_left, e_height, e_width = params.erase_box
        view[:, e_top : e_top + e_height, e_left : e_left + e_width] = 0.0
    return view


def to_chw_uint8(image: torch.Tensor, layout: str = "auto") -> torch.Tensor:
    """``image`` (uint8 [3, H, W] or [H, W, 3]; ``layout`` "CHW", "HWC" or "auto") as uint8 [3, H, W]."""
    if image.dtype != torch.uint8 or image.ndim != 3:
        shape = list(image.shape)
        raise ValueError(f"image: expected a uint8 tensor [3,H,W] or [H,W,3], got {image.dtype} {shape}")
    if layout == "auto":
        chw, hwc = image.shape[0] == 3, image.shape[-1] == 3
        if not chw and not hwc:
            raise ValueError(f"image: expected 3 channels first or last, got shape {list(image.shape)}")
        if chw and hwc:
            raise ValueError(f"image: layout of shape {list(image.shape)} is ambiguous; pass layout=CHW/HWC")
        layout = "CHW" if chw else "HWC"
    if layout not in ("CHW", "HWC"):
        raise ValueError(f"layout: expected 'auto', 'CHW' or 'HWC', got {layout!r}")
    image = image if layout == "CHW" else image.permute(2, 0, 1)
    if image.shape[0] != 3:
        raise ValueError(f"image: expected 3 channels in layout {layout}, got shape {list(image.shape)}")
    return image


class TorchMultiCrop:
    """All views of a ``MultiCropSpec`` for one image, deterministic given ``seed``.

    ``__call__(image)`` returns the views in spec order, each float32 [3, h, w] normalised with the spec's
    mean/std; ``batch(images)`` returns one [B, 3, h, w] tensor per view.
    """

    def __init__(self, spec: MultiCropSpec, seed: int | None = None, layout: str = "auto") -> None:
        self.spec = spec
        self.layout = layout
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def sample_params(self, image_hw: tuple[int, int]) -> list[ViewParams]:
        """Parameters of every view, in spec order, for a source image of size ``image_hw``."""
        views = self.spec.views()
        return [sample_view_params(group, index, image_hw, self.generator) for group, index in views]

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        image = to_chw_uint8(image, self.layout)
        all_params = self.sample_params((image.shape[1], image.shape[2]))
        return [
            apply_view(image, params, group, self.spec.mean, self.spec.std)
            for params, (group, _) in zip(all_params, self.spec.views(), strict=True)
        ]

    def batch(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Views of each image in ``images``, stacked per view: a list of [B, 3, h, w] tensors."""
        if not images:
            raise ValueError("images: expected at least one image")
        per_image = [self(image) for image in images]
        return [torch.stack(views) for views in zip(*per_image, strict=True)]
