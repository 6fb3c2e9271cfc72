"""Multi-crop views with DALI operators, for use inside a ``@pipeline_def`` body, on device "gpu" or "cpu".

``dali_multicrop(images, spec)`` takes decoded crops (uint8 HWC, any size per sample) and returns one
float32 CHW DataNode per view, in spec order, following the op order of ``torch_views``:

- crop: ``fn.random_resized_crop`` with the group's scale / ratio / attempts (same sampler algorithm as
  ``sampling.sample_resized_crop``), or ``fn.resize`` of the whole image when ``random_crop`` is off;
- jitter: brightness and contrast around the view's mean luma (as torchvision) by arithmetic, then
  ``fn.hsv`` for saturation and hue, every factor set to identity for samples whose jitter coin is 0;
  grayscale is the same ``fn.hsv`` with saturation 0, so it acts after the jitter as in torch;
- blur: ``fn.gaussian_blur`` with per-sample sigma and window 2·ceil(3σ)+1, or window 1 (identity) for
  samples whose blur coin is 0;
- solarize: arithmetic ``x + [x >= t]·coin·(255 − 2x)``;
- flip + normalise + CHW + float: ``fn.crop_mirror_normalize``;
- erase: ``fn.erase`` with the rectangle of ``sampling.erase_box`` evaluated on DataNodes, shape 0 when the
  erase coin is 0.

Known differences from the torch path, pixel-level only (the random choices follow the same
distributions): DALI's hsv is a linear approximation of torchvision's HSV hue shift, and borders of blur
and resize are handled differently.
"""

from __future__ import annotations

import math

from reidscale.data.views.sampling import erase_box
from reidscale.data.views.spec import CropSpec, MultiCropSpec

try:
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types
    from nvidia.dali.data_node import DataNode
except ImportError as error:  # pragma: no cover - exercised only without DALI
    raise ImportError("reidscale.data.views.dali_views needs nvidia-dali (nvidia-dali-cuda130)") from error

_INTERP = {"nearest": types.INTERP_NN, "bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}
DEVICES = ("cpu", "gpu")


def _on(node: DataNode, device: str) -> DataNode:
    """Per-sample scalars are drawn on the CPU; move them next to the images for arithmetic."""
    return node.gpu() if device == "gpu" else node


def _coin(probability: float) -> DataNode:
    return fn.cast(fn.random.coin_flip(probability=probability), dtype=types.FLOAT)


def _uniform(low: float, high: float) -> DataNode | float:
    """U(low, high) per sample; DALI refuses an empty range, so a zero-width one is the constant."""
    return fn.random.uniform(range=(low, high)) if high > low else low


def _factor(strength: float) -> DataNode | float:
    return _uniform(max(0.0, 1.0 - strength), 1.0 + strength)


def _gated(value: DataNode | float, gate: DataNode, identity: float) -> DataNode:
    return identity + gate * (value - identity)


def _crop(images: DataNode, group: CropSpec) -> DataNode:
    if not group.random_crop:
        interp = _INTERP[group.interpolation]
        return fn.resize(images, size=list(group.size), interp_type=interp, antialias=True)
    return fn.random_resized_crop(
        images,
        size=list(group.size),
        random_area=list(group.scale),
        random_aspect_ratio=list(group.ratio),
        num_attempts=group.crop_attempts,
        interp_type=_INTERP[group.interpolation],
        antialias=True,
    )


def _brightness_contrast(view: DataNode, brightness: DataNode, contrast: DataNode, device: str) -> DataNode:
    """torchvision's brightness then contrast around the mean luma, b·(m + c·(x − m)), on the view's device
    (``fn.brightness_contrast`` would need the per-sample mean as a CPU argument)."""
    luma = fn.color_space_conversion(view, image_type=types.RGB, output_type=types.GRAY)
    mean_luma = fn.reductions.mean(fn.cast(luma, dtype=types.FLOAT))
    pixels = fn.cast(view, dtype=types.FLOAT)
    adjusted = _on(brightness, device) * (mean_luma + _on(contrast, device) * (pixels - mean_luma))
    return fn.cast(dmath.clamp(adjusted, 0.0, 255.0), dtype=types.UINT8)


def _jitter_and_grayscale(view: DataNode, group: CropSpec, device: str) -> DataNode:
    jitter = _coin(group.color_jitter_p)
    keep_colour = 1.0 - _coin(group.grayscale_p)
    if group.color_jitter_p > 0:
        brightness = _gated(_factor(group.brightness), jitter, 1.0)
        contrast = _gated(_factor(group.contrast), jitter, 1.0)
        view = _brightness_contrast(view, brightness, contrast, device)
    saturation = _gated(_factor(group.saturation), jitter, 1.0) * keep_colour
    hue_degrees = jitter * _uniform(-360.0 * group.hue, 360.0 * group.hue)
    return fn.hsv(view, saturation=saturation, hue=hue_degrees)


def _blur(view: DataNode, probability: float, sigma_range: tuple[float, float]) -> DataNode:
    blur = _coin(probability)
    sigma = _uniform(*sigma_range)
    radius = dmath.ceil(3.0 * sigma) if isinstance(sigma, DataNode) else math.ceil(3.0 * sigma)
    window = fn.cast(blur * (2.0 * radius + 1.0) + (1.0 - blur), dtype=types.INT32)
    return fn.gaussian_blur(view, sigma=sigma, window_size=window)


def _solarize(view: DataNode, probability: float, threshold: int, device: str) -> DataNode:
    solarize = _on(fn.cast(fn.random.coin_flip(probability=probability), dtype=types.INT32), device)
    pixels = fn.cast(view, dtype=types.INT32)
    inverted = pixels + (pixels >= threshold) * solarize * (255 - 2 * pixels)
    return fn.cast(inverted, dtype=types.UINT8)


def _erase(view: DataNode, group: CropSpec) -> DataNode:
    uniforms = tuple(fn.random.uniform(range=(0.0, 1.0)) for _ in range(4))
    top, left, box_h, box_w = erase_box(uniforms, group.size, group.erase_scale, group.erase_ratio, xp=dmath)
    erase = _coin(group.erase_p)
    return fn.erase(
        view,
        anchor=fn.stack(top, left),
        shape=fn.stack(box_h * erase, box_w * erase),
        axis_names="HW",
        fill_value=0.0,
    )


def dali_view(
    images: DataNode, group: CropSpec, view_index: int, spec: MultiCropSpec, device: str = "gpu"
) -> DataNode:
    """View ``view_index`` of ``group``: float32 [3, h, w] per sample, normalised with ``spec``'s mean/std."""
    view = _crop(images, group)
    if group.color_jitter_p > 0 or group.grayscale_p > 0:
        view = _jitter_and_grayscale(view, group, device)
    if group.blur_prob(view_index) > 0:
        view = _blur(view, group.blur_prob(view_index), group.blur_sigma)
    if group.solarize_prob(view_index) > 0:
        view = _solarize(view, group.solarize_prob(view_index), group.solarize_threshold, device)
    view = fn.crop_mirror_normalize(
        view,
        mirror=fn.random.coin_flip(probability=group.flip_p),
        mean=[255.0 * value for value in spec.mean],
        std=[255.0 * value for value in spec.std],
        dtype=types.FLOAT,
        output_layout="CHW",
    )
    if group.erase_p > 0:
        view = _erase(view, group)
    return view


def dali_multicrop(images: DataNode, spec: MultiCropSpec, device: str = "gpu") -> list[DataNode]:
    """All views of ``spec`` for ``images`` (uint8 HWC DataNode, CPU or GPU), in spec order.

    device: where the view operators run; "gpu" moves CPU images to the GPU first, "cpu" needs CPU images
    (a pipeline with ``device_id=None`` can only use "cpu").
    Returns one DataNode per view, float32 CHW [3, h, w] per sample.
    """
    if device not in DEVICES:
        raise ValueError(f"dali_multicrop: device must be one of {DEVICES}, got {device!r}")
    if device == "gpu" and images.device == "cpu":
        images = images.gpu()
    if device == "cpu" and images.device != "cpu":
        raise ValueError(f"dali_multicrop: device='cpu' needs CPU images, got images on {images.device!r}")
    return [dali_view(images, group, index, spec, device) for group, index in spec.views()]
