"""Geometric parameter samplers: the distribution definitions both view implementations follow.

``sample_resized_crop`` is the random-resized-crop sampler of torchvision's ``RandomResizedCrop`` and DALI's
``fn.random_resized_crop`` (area fraction uniform in ``scale``, aspect ratio w/h log-uniform in ``ratio``,
up to ``attempts`` tries, then a centre crop with the aspect clamped into ``ratio``). The torch path calls it;
the DALI path passes the same ``scale``/``ratio``/``attempts`` to DALI's operator, whose sampler is the same
algorithm (tests/data/test_views_dali.py checks the two distributions against each other).

``erase_box`` defines the random-erasing rectangle from four uniforms with plain arithmetic, so the torch
path evaluates it on tensors and the DALI path on DataNodes (``nvidia.dali.math``): one formula, two
backends. Decided: unlike torchvision's ``RandomErasing`` (10 tries, then no erasing), the aspect ratio is
drawn from the part of ``ratio`` where the rectangle fits, so a view chosen for erasing is always erased;
a retry loop cannot be expressed per sample in a DALI graph.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch


def _uniform(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator: torch.Generator | None, high_inclusive: int) -> int:
    return int(torch.randint(0, high_inclusive + 1, (), generator=generator).item())


def sample_resized_crop(
    image_hw: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """A random-resized-crop box (top, left, height, width) inside an image of size ``image_hw``."""
    height, width = image_hw
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = _randint(generator, height - crop_h)
            left = _randint(generator, width - crop_w)
            return top, left, crop_h, crop_w
    return centre_crop_fallback(image_hw, ratio)


def centre_crop_fallback(image_hw: tuple[int, int], ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """The largest centred box whose aspect w/h is the image's clamped into ``ratio``."""
    height, width = image_hw
    image_ratio = width / height
    if image_ratio < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif image_ratio > ratio[1]:
        crop_w, crop_h = round(height * ratio[1]), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def _minimum(a: Any, b: Any) -> torch.Tensor:
    return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))


def _maximum(a: Any, b: Any) -> torch.Tensor:
    return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))


TORCH_MATH = SimpleNamespace(
    log=torch.log, exp=torch.exp, sqrt=torch.sqrt, floor=torch.floor, min=_minimum, max=_maximum
)


def erase_box(
    uniforms: tuple[Any, Any, Any, Any],
    view_hw: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    xp: Any = TORCH_MATH,
) -> tuple[Any, Any, Any, Any]:
    """Erasing rectangle (top, left, height, width) in a view of size ``view_hw`` from four U(0, 1) draws.

    uniforms: (u_area, u_ratio, u_top, u_left), float tensors (torch) or DataNodes (DALI) of equal shape
    xp:       math namespace with log, exp, sqrt, floor, min, max (``TORCH_MATH`` or ``nvidia.dali.math``)
    Area fraction ~ U(scale); log(h/w) ~ U over ``log(ratio)`` intersected with the aspects that fit, the
    rectangle is then placed uniformly. Returns float values holding whole numbers; 1 <= h <= H, 1 <= w <= W.
    """
    u_area, u_ratio, u_top, u_left = uniforms
    height, width = view_hw
    target = (scale[0] + (scale[1] - scale[0]) * u_area) * (height * width)
    fit_low = xp.log(target / (width * width))
    fit_high = xp.log((height * height) / target)
    low = xp.max(fit_low, math.log(ratio[0]))
    high = xp.min(fit_high, math.log(ratio[1]))
    log_aspect = xp.min(xp.max(low + (high - low) * u_ratio, fit_low), fit_high)
    aspect = xp.exp(log_aspect)
    box_h = xp.min(xp.max(xp.floor(xp.sqrt(target * aspect)), 1.0), float(height))
    box_w = xp.min(xp.max(xp.floor(xp.sqrt(target / aspect)), 1.0), float(width))
    top = xp.min(xp.floor(u_top * (height - box_h + 1)), height - box_h)
    left = xp.min(xp.floor(u_left * (width - box_w + 1)), width - box_w)
    return top, left, box_h, box_w
