"""The multi-crop view specification shared by the torch (CPU) and DALI implementations.

A ``MultiCropSpec`` is an ordered tuple of ``CropSpec`` groups; each group produces ``count`` views of one
resolution, and the views of a spec are numbered group by group (CION: global 1, global 2, local 1..n).
Both implementations read only this spec, so the CPU and GPU paths draw from the same distributions.

Recipes (each described in its method's section of docs/methods.md):
- ``cion_multicrop``: 2 global 256×128 views (area 0.8–1.0, aspect w/h 0.4–0.6) and ``num_local``
  local 128×64 views (area 0.05–0.8); flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2,
  blur p=1.0 / 0.1 on global 1 / 2 and 0.5 on locals, solarize 0.2 on global 2 only; bicubic.
- ``moco_two_view``: 2 views 256×128, area 0.2–1.0, grayscale 0.2, blur 0.5, flip 0.5, erasing 0.5.
- ``flip_only``: the whole image resized to 256×128, flip 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from reidscale.data.normalize import IMAGENET_MEAN, IMAGENET_STD

INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"CropSpec.{name}: expected a probability in [0, 1], got {value!r}")


def _check_range(name: str, bounds: tuple[float, float], low: float, high: float) -> None:
    if len(bounds) != 2 or not low <= bounds[0] <= bounds[1] <= high:
        raise ValueError(
            f"CropSpec.{name}: expected (min, max) with {low} <= min <= max <= {high}, got {bounds!r}"
        )


@dataclass(frozen=True)
class CropSpec:
    """One group of ``count`` views of the same output size; every field is a distribution parameter.

    count:          number of views in the group (>= 1)
    size:           output (H, W) in pixels
    scale:          random-resized-crop area fraction range (of the source image), uniform
    ratio:          random-resized-crop aspect ratio w/h range, log-uniform (pixels of the source)
    random_crop:    False = resize the whole source to ``size`` (no crop; ``scale``/``ratio`` unused)
    crop_attempts:  tries of the crop sampler before its centre-crop fallback (torchvision / DALI: 10)
    flip_p:         probability of a horizontal flip
    color_jitter_p: probability that colour jitter is applied to a view (all four factors together)
    brightness, contrast, saturation: jitter factor drawn uniformly from [max(0, 1 - x), 1 + x]
    hue:            hue shift drawn uniformly from [-hue, hue], in turns (0.5 = 180°)
    grayscale_p:    probability of converting to grayscale (3 equal channels), after jitter
    blur_p:         Gaussian blur probability; one float for all views, or a tuple: one per view
    blur_sigma:     blur sigma range (pixels of the output view), uniform; kernel width 2·ceil(3σ)+1
    solarize_p:     solarize probability, float or per-view tuple like ``blur_p``
    solarize_threshold: pixels >= threshold (uint8) are inverted
    erase_p:        random-erasing probability (on the normalised view, filled with 0)
    erase_scale:    erased area fraction range, uniform
    erase_ratio:    erased rectangle aspect h/w range, log-uniform (see ``sampling.erase_box``)
    interpolation:  "nearest" | "bilinear" | "bicubic" (resizing is antialiased)
    """

    count: int
    size: tuple[int, int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.4, 0.6)
    random_crop: bool = True
    crop_attempts: int = 10
    flip_p: float = 0.5
    color_jitter_p: float = 0.0
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.0
    blur_p: float | tuple[float, ...] = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float | tuple[float, ...] = 0.0
    solarize_threshold: int = 128
    erase_p: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"CropSpec.count: expected >= 1, got {self.count!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"CropSpec.size: expected (H, W) with H, W >= 1, got {self.size!r}")
        if self.crop_attempts < 1:
            raise ValueError(f"CropSpec.crop_attempts: expected >= 1, got {self.crop_attempts!r}")
        _check_range("scale", self.scale, 1e-6, 1.0)
        _check_range("ratio", self.ratio, 1e-6, math.inf)
        _check_range("blur_sigma", self.blur_sigma, 1e-3, math.inf)
        _check_range("erase_scale", self.erase_scale, 1e-6, 1.0)
        _check_range("erase_ratio", self.erase_ratio, 1e-6, math.inf)
        for name in ("flip_p", "color_jitter_p", "grayscale_p", "erase_p"):
            _check_probability(name, getattr(self, name))
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"CropSpec.{name}: expected >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"CropSpec.hue: expected a shift in [0, 0.5] turns, got {self.hue!r}")
        for name in ("blur_p", "solarize_p"):
            self._check_per_view(name, getattr(self, name))
        if not 0 <= self.solarize_threshold <= 255:
            raise ValueError(f"CropSpec.solarize_threshold: expected 0..255, got {self.solarize_threshold!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"CropSpec.interpolation: expected one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )

    def _check_per_view(self, name: str, value: float | tuple[float, ...]) -> None:
        values = value if isinstance(value, tuple) else (value,)
        if isinstance(value, tuple) and len(value) != self.count:
            raise ValueError(f"CropSpec.{name}: expected {self.count} probabilities (per view), got {value}")
        for item in values:
            _check_probability(name, item)

    def blur_prob(self, view_index: int) -> float:
        """Blur probability of view ``view_index`` (0-based inside this group)."""
        return _per_view(self.blur_p, view_index, self.count)

    def solarize_prob(self, view_index: int) -> float:
        """Solarize probability of view ``view_index`` (0-based inside this group)."""
        return _per_view(self.solarize_p, view_index, self.count)


def _per_view(value: float | tuple[float, ...], view_index: int, count: int) -> float:
    if not 0 <= view_index < count:
        raise IndexError(f"view_index {view_index} outside the group's {count} views")
    return value[view_index] if isinstance(value, tuple) else value


@dataclass(frozen=True)
class MultiCropSpec:
    """An ordered set of view groups plus the normalisation applied to every view.

    name:   recipe name (for logs and configs)
    groups: the view groups, in output order
    mean, std: per-channel normalisation of [0, 1] RGB values (ImageNet by default)
    """

    name: str
    groups: tuple[CropSpec, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError(f"MultiCropSpec {self.name!r}: groups must hold at least one CropSpec")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"MultiCropSpec {self.name!r}: mean/std need 3 values, std > 0")

    @property
    def num_views(self) -> int:
        return sum(group.count for group in self.groups)

    def views(self) -> list[tuple[CropSpec, int]]:
        """(group, index inside the group) for every view, in output order."""
        return [(group, index) for group in self.groups for index in range(group.count)]

    def view_sizes(self) -> list[tuple[int, int]]:
        """Output (H, W) of every view, in output order."""
        return [group.size for group, _ in self.views()]


def cion_multicrop(
    num_local: int = 8,
    global_size: tuple[int, int] = (256, 128),
    local_size: tuple[int, int] = (128, 64),
    color_jitter_p: float = 0.8,
    hue: float = 0.1,
    grayscale_p: float = 0.2,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
) -> MultiCropSpec:
    """CION's 2 global + ``num_local`` local views (docs/methods.md#cion); the colour and blur arguments
    default to the released recipe (jitter 0.4/0.4/0.2/``hue`` with probability 0.8, grayscale 0.2, blur
    sigma 0.1-2 pixels of the view at 256×128 / 128×64)."""
    if num_local < 0:
        raise ValueError(f"cion_multicrop: num_local must be >= 0, got {num_local}")
    photometric = {
        "flip_p": 0.5,
        "color_jitter_p": color_jitter_p,
        "hue": hue,
        "grayscale_p": grayscale_p,
        "ratio": (0.4, 0.6),
        "blur_sigma": tuple(blur_sigma),
    }
    global_views = CropSpec(
        count=2, size=global_size, scale=(0.8, 1.0), blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2), **photometric
    )
    groups = [global_views]
    if num_local:
        local_views = CropSpec(count=num_local, size=local_size, scale=(0.05, 0.8), blur_p=0.5, **photometric)
        groups.append(local_views)
    return MultiCropSpec(name="cion", groups=tuple(groups))


def moco_two_view(
    size: tuple[int, int] = (256, 128),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    color_jitter_p: float = 0.0,
) -> MultiCropSpec:
    """The MoCo-v2 person recipe (docs/methods.md#moco-v2-base-recipe).

    Decided: the aspect range is MoCo-v2's default (3/4, 4/3) as the person recipe names no other, and colour
    jitter is off by default because that recipe lists only grayscale, blur, flip and erasing (pass
    ``color_jitter_p=0.8`` for MoCo-v2's jitter).
    """
    view = CropSpec(
        count=2,
        size=size,
        scale=(0.2, 1.0),
        ratio=ratio,
        flip_p=0.5,
        color_jitter_p=color_jitter_p,
        saturation=0.4,
        grayscale_p=0.2,
        blur_p=0.5,
        erase_p=0.5,
    )
    return MultiCropSpec(name="moco", groups=(view,))


def flip_only(size: tuple[int, int] = (256, 128), flip_p: float = 0.5) -> MultiCropSpec:
    """Selective contrastive learning's augmentation (docs/methods.md): resize the whole crop, flip with
    probability ``flip_p`` (0.5 in the method)."""
    return MultiCropSpec(
        name="flip", groups=(CropSpec(count=1, size=size, random_crop=False, flip_p=flip_p),)
    )


RECIPES: dict[str, Callable[..., MultiCropSpec]] = {
    "cion": cion_multicrop,
    "moco": moco_two_view,
    "flip": flip_only,
}


def multicrop_spec(name: str, **kwargs: object) -> MultiCropSpec:
    """The recipe registered as ``name`` ("cion", "moco", "flip"), built with ``kwargs``."""
    if name not in RECIPES:
        raise ValueError(f"unknown multi-crop recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name](**kwargs)
