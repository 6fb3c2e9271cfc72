"""Multi-crop views: spec validation, sampler distributions (many draws), the torch implementation's ops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reidscale.data.views import (
    CropSpec,
    MultiCropSpec,
    TorchMultiCrop,
    ViewParams,
    apply_view,
    cion_multicrop,
    erase_box,
    flip_only,
    flip_view,
    moco_two_view,
    multicrop_spec,
    sample_flip,
    sample_resized_crop,
)

DRAWS = 2000
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def binomial_tolerance(p: float, n: int) -> float:
    """4 standard deviations of a frequency of n Bernoulli(p) draws."""
    return 4.0 * math.sqrt(max(p * (1 - p), 1e-12) / n)


def draw_boxes(image_hw, scale, ratio, n=DRAWS, seed=0) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return np.array([sample_resized_crop(image_hw, scale, ratio, generator) for _ in range(n)], dtype=float)


# --- spec ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"count": 0}, "count"),
        ({"scale": (0.9, 0.2)}, "scale"),
        ({"scale": (0.1, 1.5)}, "scale"),
        ({"flip_p": 1.2}, "flip_p"),
        ({"blur_p": (1.0, 0.1, 0.5)}, "blur_p"),
        ({"solarize_p": (0.0, -0.1)}, "solarize_p"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"hue": 0.7}, "hue"),
    ],
)
def test_crop_spec_rejects_bad_fields_by_name(kwargs, field):
    arguments = {"count": 2, "size": (32, 16), **kwargs}
    with pytest.raises(ValueError, match=f"CropSpec.{field}"):
        CropSpec(**arguments)


def test_cion_recipe_views_and_per_view_probabilities():
    spec = cion_multicrop()
    assert spec.num_views == 10
    assert spec.view_sizes() == [(256, 128)] * 2 + [(128, 64)] * 8
    global_views, local_views = spec.groups
    assert (global_views.scale, global_views.ratio, local_views.scale) == (
        (0.8, 1.0),
        (0.4, 0.6),
        (0.05, 0.8),
    )
    assert [global_views.blur_prob(i) for i in range(2)] == [1.0, 0.1]
    assert [global_views.solarize_prob(i) for i in range(2)] == [0.0, 0.2]
    assert {local_views.blur_prob(i) for i in range(8)} == {0.5}
    assert {local_views.solarize_prob(i) for i in range(8)} == {0.0}
    assert (global_views.color_jitter_p, global_views.grayscale_p, global_views.interpolation) == (
        0.8,
        0.2,
        "bicubic",
    )
    assert global_views.hue == local_views.hue == 0.1
    assert cion_multicrop(num_local=0).num_views == 2
    plain = cion_multicrop(num_local=2, color_jitter_p=0.5, hue=0.0, grayscale_p=0.0)
    assert {(g.color_jitter_p, g.hue, g.grayscale_p) for g in plain.groups} == {(0.5, 0.0, 0.0)}
    with pytest.raises(IndexError):
        global_views.blur_prob(2)


def test_registry_builds_recipes_and_names_unknown_ones():
    assert multicrop_spec("cion", num_local=4).num_views == 6
    moco = multicrop_spec("moco")
    assert moco.num_views == 2 and moco.groups[0].erase_p == 0.5 and moco.groups[0].scale == (0.2, 1.0)
    flip = multicrop_spec("flip")
    assert flip.num_views == 1 and not flip.groups[0].random_crop
    with pytest.raises(ValueError, match=r"'dino'.*cion"):
        multicrop_spec("dino")


# --- geometric samplers ------------------------------------------------------------------------------------


def test_crop_area_and_log_aspect_are_uniform_when_every_draw_fits():
    # On a 2:1 image every local draw fits (w = W·sqrt(2·a·r) <= W, h = H·sqrt(a/(2r)) <= H), so no retry
    # shapes the distribution: area ~ U(0.05, 0.8), log(w/h) ~ U(log 0.4, log 0.6). A large image keeps the
    # rounding of w, h small next to the gap between log-uniform and uniform aspect medians (0.021).
    draws = 4 * DRAWS
    boxes = draw_boxes((2560, 1280), (0.05, 0.8), (0.4, 0.6), n=draws)
    area = boxes[:, 2] * boxes[:, 3] / (2560 * 1280)
    log_aspect = np.log(boxes[:, 3] / boxes[:, 2])
    rounding = 0.5 / 256 + 0.5 / 640  # relative error of rounded w, h >= (256, 640) pixels
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        spread = math.sqrt(q * (1 - q) / draws)
        expected_area = 0.05 + 0.75 * q
        assert abs(np.quantile(area, q) - expected_area) < 4 * spread * 0.75 + rounding * expected_area
        expected_log = math.log(0.4) + math.log(1.5) * q
        assert abs(np.quantile(log_aspect, q) - expected_log) < 4 * spread * math.log(1.5) + rounding
    assert abs(area.mean() - 0.425) < 4 * 0.75 / math.sqrt(12 * draws) + 0.003
    top_fraction = boxes[:, 0] / np.maximum(2560 - boxes[:, 2], 1)
    assert abs(top_fraction.mean() - 0.5) < 4 * math.sqrt(1 / 12 / draws) + 0.001
    assert (boxes[:, 0] + boxes[:, 2] <= 2560).all() and (boxes[:, 1] + boxes[:, 3] <= 1280).all()


def test_accepted_global_crops_follow_the_conditional_distribution_on_the_fitting_region():
    # CION global on 256×128: a draw (a, r) fits iff a/2 <= r <= 1/(2a); accepted draws are uniform on that
    # region of the (a, log r) rectangle. Its mean area, by a fine grid, is the independent truth.
    area_grid, log_r_grid = np.meshgrid(
        np.linspace(0.8, 1.0, 1001), np.linspace(math.log(0.4), math.log(0.6), 1001)
    )
    fits = (np.exp(log_r_grid) >= area_grid / 2) & (np.exp(log_r_grid) <= 1 / (2 * area_grid))
    expected_mean = area_grid[fits].mean()
    expected_sd = area_grid[fits].std()
    boxes = draw_boxes((256, 128), (0.8, 1.0), (0.4, 0.6))
    area = boxes[:, 2] * boxes[:, 3] / (256 * 128)
    assert abs(area.mean() - expected_mean) < 4 * expected_sd / math.sqrt(DRAWS) + 0.004
    assert area.min() >= 0.8 - 0.01


def test_fallback_is_a_centre_crop_with_clamped_aspect_at_the_rate_of_ten_misses():
    # 100×100 image, area 0.5–1, aspect 0.4–0.6: a draw fits iff round(100·sqrt(a/r)) <= 100, i.e.
    # a/r < 1.005²; w = 100·sqrt(a·r) always fits. P(fit) = q by grid;
    # the fallback (10 misses) has probability (1 - q)^10 and is the centred 100×60 box.
    area_grid, log_r_grid = np.meshgrid(
        np.linspace(0.5, 1.0, 1001), np.linspace(math.log(0.4), math.log(0.6), 1001)
    )
    fit_rate = (area_grid / np.exp(log_r_grid) < 1.005**2).mean()
    expected = (1 - fit_rate) ** 10
    boxes = draw_boxes((100, 100), (0.5, 1.0), (0.4, 0.6))
    fallback = (boxes == np.array([0, 20, 100, 60])).all(axis=1)
    assert abs(fallback.mean() - expected) < binomial_tolerance(expected, DRAWS)
    generator = torch.Generator().manual_seed(0)
    assert sample_resized_crop((100, 100), (0.99, 1.0), (0.4, 0.6), generator) == (0, 20, 100, 60)
    assert sample_resized_crop((50, 200), (0.99, 1.0), (0.4, 0.6), generator) == (0, 85, 50, 30)


def test_erase_box_hand_worked_cases():
    def box(uniforms, view_hw, scale, ratio):
        values = erase_box(
            tuple(torch.tensor(float(u), dtype=torch.float64) for u in uniforms), view_hw, scale, ratio
        )
        return tuple(int(v) for v in values)

    # area 0.02·32768 = 655.36, aspect 0.3 → h = floor(14.02), w = floor(46.74)
    assert box((0, 0, 0, 0), (256, 128), (0.02, 0.33), (0.3, 3.3)) == (0, 0, 14, 46)
    # area 10813.44, aspect 3.3 → h = 188, w = 57, placed at the far corner
    assert box((1, 1, 1, 1), (256, 128), (0.02, 0.33), (0.3, 3.3)) == (68, 71, 188, 57)
    # a tall aspect range that cannot fit a 10×100 view: the tallest fitting box, h = 10, w = 500/10
    assert box((0, 0, 0, 0), (10, 100), (0.5, 0.5), (3.0, 4.0)) == (0, 0, 10, 50)


def test_erase_boxes_fit_and_their_area_follows_the_scale_range():
    uniforms = torch.rand(4, DRAWS, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    top, left, height, width = erase_box(tuple(uniforms), (256, 128), (0.02, 0.33), (0.3, 3.3))
    assert (top >= 0).all() and (left >= 0).all() and (height >= 1).all() and (width >= 1).all()
    assert (top + height <= 256).all() and (left + width <= 128).all()
    area = (height * width / (256 * 128)).numpy()
    # floor() loses at most one row and column: relative area loss <= 1/h + 1/w <= 1/10 + 1/18 at the low end
    assert abs(area.mean() - 0.175) < 4 * 0.31 / math.sqrt(12 * DRAWS) + 0.02 * 0.175 + 0.005
    assert area.min() >= 0.02 * (1 - 1 / 10 - 1 / 18) and area.max() <= 0.33


# --- photometric parameters ------------------------------------------------------------------------------


def test_cion_view_parameter_frequencies_per_view():
    views = TorchMultiCrop(cion_multicrop(), seed=0)
    draws = [views.sample_params((256, 128)) for _ in range(DRAWS)]

    def rate(views_index, predicate):
        values = [predicate(params[i]) for params in draws for i in views_index]
        return float(np.mean(values)), len(values)

    locals_ = range(2, 10)
    expected = [
        ((0, 1, *locals_), lambda p: p.flip, 0.5),
        ((0, 1, *locals_), lambda p: p.jitter is not None, 0.8),
        ((0, 1, *locals_), lambda p: p.grayscale, 0.2),
        ((0,), lambda p: p.blur_sigma is not None, 1.0),
        ((1,), lambda p: p.blur_sigma is not None, 0.1),
        (locals_, lambda p: p.blur_sigma is not None, 0.5),
        ((0,), lambda p: p.solarize, 0.0),
        ((1,), lambda p: p.solarize, 0.2),
        (locals_, lambda p: p.solarize, 0.0),
        ((0, 1, *locals_), lambda p: p.erase_box is not None, 0.0),
    ]
    for indices, predicate, probability in expected:
        frequency, count = rate(indices, predicate)
        assert abs(frequency - probability) <= binomial_tolerance(probability, count), (indices, probability)
    jitters = np.array([p.jitter for params in draws for p in params if p.jitter is not None])
    sigmas = np.array([p.blur_sigma for params in draws for p in params if p.blur_sigma is not None])
    for values, low, high in [
        (jitters[:, 0], 0.6, 1.4),
        (jitters[:, 2], 0.8, 1.2),
        (jitters[:, 3], -0.1, 0.1),
    ]:
        assert low <= values.min() and values.max() <= high
        assert abs(values.mean() - (low + high) / 2) < 4 * (high - low) / math.sqrt(12 * len(values))
    assert sigmas.min() >= 0.1 and sigmas.max() <= 2.0
    assert abs(sigmas.mean() - 1.05) < 4 * 1.9 / math.sqrt(12 * len(sigmas))


def test_moco_erase_frequency():
    views = TorchMultiCrop(moco_two_view(), seed=2)
    erased = [p.erase_box is not None for _ in range(DRAWS // 2) for p in views.sample_params((256, 128))]
    assert abs(np.mean(erased) - 0.5) <= binomial_tolerance(0.5, len(erased))


# --- the ops and the whole view ----------------------------------------------------------------------------


def plain_params(**changes) -> ViewParams:
    fields = {"box": (0, 0, 16, 8), "flip": False, "jitter": None, "grayscale": False}
    fields.update({"blur_sigma": None, "solarize": False, "erase_box": None})
    fields.update(changes)
    return ViewParams(**fields)


def normalise(image: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return (image.float() / 255 - mean) / std


def test_apply_view_crop_flip_solarize_erase_by_hand():
    group = CropSpec(count=1, size=(16, 8))
    image = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    region = image[:, 5:21, 3:11]
    view = apply_view(image, plain_params(box=(5, 3, 16, 8)), group, MEAN, STD)
    torch.testing.assert_close(view, normalise(region))
    flipped = apply_view(image, plain_params(box=(5, 3, 16, 8), flip=True), group, MEAN, STD)
    torch.testing.assert_close(flipped, normalise(region.flip(-1)))
    levels = (
        torch.tensor([0, 127, 128, 255], dtype=torch.uint8).repeat_interleave(2).view(1, 8).expand(3, 16, 8)
    )
    solarized = apply_view(levels.contiguous(), plain_params(solarize=True), group, MEAN, STD)
    expected = (
        torch.tensor([0, 127, 127, 0], dtype=torch.uint8).repeat_interleave(2).view(1, 8).expand(3, 16, 8)
    )
    torch.testing.assert_close(solarized, normalise(expected))
    erased = apply_view(image, plain_params(box=(5, 3, 16, 8), erase_box=(2, 1, 4, 3)), group, MEAN, STD)
    assert (erased[:, 2:6, 1:4] == 0).all()
    torch.testing.assert_close(erased[:, 6:], normalise(region)[:, 6:])


def test_apply_view_grayscale_jitter_blur_on_constant_colour():
    group = CropSpec(count=1, size=(16, 8))
    image = torch.tensor([200, 100, 50], dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 16).contiguous()
    gray = apply_view(image, plain_params(box=(0, 0, 32, 16), grayscale=True), group, (0, 0, 0), (1, 1, 1))
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    assert (gray - luma).abs().max() <= 1 / 255
    darker = apply_view(image, plain_params(jitter=(0.5, 1.0, 1.0, 0.0)), group, (0, 0, 0), (1, 1, 1))
    torch.testing.assert_close(darker[:, 0, 0], torch.tensor([100, 50, 25]) / 255)
    blurred = apply_view(image, plain_params(box=(3, 2, 20, 10), blur_sigma=2.0), group, (0, 0, 0), (1, 1, 1))
    torch.testing.assert_close(blurred, image[:, :16, :8].float() / 255)


def test_constant_colour_view_has_the_known_normalised_value_and_shapes():
    spec = MultiCropSpec(
        name="plain",
        groups=(
            CropSpec(count=2, size=(32, 16), scale=(0.3, 1.0), blur_p=1.0),
            CropSpec(count=3, size=(16, 8)),
        ),
    )
    image = torch.tensor([10, 128, 240], dtype=torch.uint8).view(1, 1, 3).expand(50, 30, 3).contiguous()
    views = TorchMultiCrop(spec, seed=0)(image)
    assert [tuple(v.shape) for v in views] == [(3, 32, 16)] * 2 + [(3, 16, 8)] * 3
    expected = normalise(torch.tensor([10, 128, 240]).view(3, 1, 1))
    for view in views:
        assert view.dtype == torch.float32
        torch.testing.assert_close(view, expected.expand_as(view))


def test_views_are_deterministic_for_a_seed_and_layout_independent():
    spec = cion_multicrop(num_local=2, global_size=(32, 16), local_size=(16, 8))
    image = torch.randint(0, 256, (48, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    first = TorchMultiCrop(spec, seed=7)(image)
    again = TorchMultiCrop(spec, seed=7)(image.permute(2, 0, 1))
    other = TorchMultiCrop(spec, seed=8)(image)
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(first, other, strict=True))
    batched = TorchMultiCrop(spec, seed=7).batch([image, image])
    assert [tuple(v.shape) for v in batched] == [(2, 3, 32, 16)] * 2 + [(2, 3, 16, 8)] * 2
    torch.testing.assert_close(batched[0][0], first[0])


def test_flip_only_resizes_the_whole_image():
    image = torch.arange(0, 256, 32, dtype=torch.uint8).view(1, 8).expand(3, 16, 8).contiguous()
    views = TorchMultiCrop(flip_only(size=(16, 8)), seed=0)
    flips = [torch.equal(views(image)[0], normalise(image.flip(-1))) for _ in range(40)]
    unflipped = [torch.equal(views(image)[0], normalise(image)) for _ in range(40)]
    assert 0 < sum(flips) < 40 and 0 < sum(unflipped) < 40


@pytest.mark.parametrize("flip_p", [0.0, 0.3, 1.0])
def test_sample_flip_is_one_uniform_draw_below_flip_p(flip_p: float) -> None:
    group = flip_only(size=(16, 8), flip_p=flip_p).groups[0]
    ours, truth = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    drawn = [sample_flip(group, ours) for _ in range(200)]
    assert drawn == [torch.rand((), generator=truth).item() < flip_p for _ in range(200)]
    assert torch.equal(torch.rand(3, generator=ours), torch.rand(3, generator=truth))  # one draw each
    image = torch.arange(24, dtype=torch.float32).view(1, 2, 3, 4)
    assert flip_view(image)[0, 1, 2].tolist() == [23.0, 22.0, 21.0, 20.0]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.zeros(3, 8, 8), "uint8"),
        (torch.zeros(8, 8, dtype=torch.uint8), "uint8 tensor"),
        (torch.zeros(3, 8, 3, dtype=torch.uint8), "ambiguous"),
        (torch.zeros(4, 8, 5, dtype=torch.uint8), "3 channels"),
    ],
)
def test_bad_images_are_rejected_with_the_reason(image, message):
    with pytest.raises(ValueError, match=message):
        TorchMultiCrop(flip_only(size=(16, 8)), seed=0)(image)
