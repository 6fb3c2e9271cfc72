"""DALI multi-crop views on the CPU: shapes, normalisation, and statistics that agree with the torch path.

Each statistic is read off synthetic images built for it: a horizontal ramp shows a flip, constant colour
shows grayscale / solarize / erasing, a checkerboard shows blur, and coordinate ramps (R = 4x, G = 2y) give
the crop box back from the slope of the output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from nvidia.dali import fn, pipeline_def

from reidscale.data.views import (
    CropSpec,
    MultiCropSpec,
    TorchMultiCrop,
    cion_multicrop,
    flip_only,
    moco_two_view,
    sample_resized_crop,
)
from reidscale.data.views.dali_views import dali_multicrop

pytestmark = pytest.mark.dali
BATCH = 64
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def run_views(
    spec: MultiCropSpec, image: np.ndarray, iterations: int, seed: int = 5, device: str = "cpu"
) -> list[np.ndarray]:
    """All views of ``spec`` for BATCH·iterations copies of ``image`` (HWC uint8): [N, 3, h, w] per view."""
    image = np.ascontiguousarray(image)
    device_id = 0 if device == "gpu" else None

    @pipeline_def(batch_size=BATCH, num_threads=2, device_id=device_id, seed=seed)
    def views_pipeline():
        images = fn.external_source(source=lambda: [image] * BATCH, layout="HWC", batch=True)
        return tuple(dali_multicrop(images, spec, device=device))

    pipeline = views_pipeline()
    pipeline.build()
    per_view: list[list[np.ndarray]] = [[] for _ in range(spec.num_views)]
    for _ in range(iterations):
        for view_index, batch in enumerate(pipeline.run()):
            batch = batch.as_cpu() if device == "gpu" else batch
            per_view[view_index].extend(np.array(sample) for sample in batch)
    return [np.stack(samples) for samples in per_view]


def torch_rate(spec: MultiCropSpec, view_index: int, predicate, draws: int = 2000) -> float:
    views = TorchMultiCrop(spec, seed=0)
    return float(np.mean([predicate(views.sample_params((32, 16))[view_index]) for _ in range(draws)]))


def assert_rates_agree(
    dali_values: np.ndarray, torch_rate_value: float, probability: float, torch_draws: int = 2000
) -> None:
    """DALI frequency within 4σ of p and within 4σ (two-sample) of the torch frequency."""
    n = len(dali_values)
    rate = float(np.mean(dali_values))
    sigma = math.sqrt(max(probability * (1 - probability), 1e-12))
    assert abs(rate - probability) <= 4 * sigma / math.sqrt(n), (rate, probability)
    assert abs(rate - torch_rate_value) <= 4 * sigma * math.sqrt(1 / n + 1 / torch_draws), (
        rate,
        torch_rate_value,
    )


def test_shapes_dtypes_match_the_torch_path():
    spec = cion_multicrop(num_local=3, global_size=(32, 16), local_size=(16, 8))
    image = np.random.default_rng(0).integers(0, 256, (40, 24, 3), dtype=np.uint8)
    dali_views = run_views(spec, image, iterations=1)
    torch_views = TorchMultiCrop(spec, seed=0)(torch.from_numpy(image))
    assert len(dali_views) == len(torch_views) == 5
    for dali_view, torch_view in zip(dali_views, torch_views, strict=True):
        assert dali_view.dtype == np.float32 and dali_view.shape[1:] == tuple(torch_view.shape)
        assert np.isfinite(dali_view).all()


def test_constant_colour_gives_the_normalised_value():
    colour = np.array([10, 128, 240])
    image = np.broadcast_to(colour, (50, 30, 3)).astype(np.uint8)
    spec = MultiCropSpec(
        name="plain", groups=(*flip_only(size=(32, 16)).groups, CropSpec(count=1, size=(16, 8)))
    )
    expected = ((colour / 255 - MEAN) / STD).reshape(1, 3, 1, 1)
    for view in run_views(spec, image, iterations=1):
        np.testing.assert_allclose(view, np.broadcast_to(expected, view.shape), atol=1.01 / 255 / STD.min())


def test_flip_frequency_matches_torch():
    ramp = np.broadcast_to(np.arange(0, 256, 16, dtype=np.uint8)[None, :, None], (32, 16, 3)).copy()
    views = run_views(flip_only(size=(32, 16)), ramp, iterations=16)[0]
    flipped = views[:, 0, :, 0].mean(axis=1) > views[:, 0, :, -1].mean(axis=1)
    torch_flips = torch_rate(flip_only(size=(32, 16)), 0, lambda p: p.flip, draws=4000)
    assert_rates_agree(flipped, torch_flips, 0.5, torch_draws=4000)


def test_grayscale_and_solarize_frequencies_per_view_match_torch():
    spec = MultiCropSpec(
        name="photometric",
        groups=(CropSpec(count=2, size=(32, 16), flip_p=0.0, grayscale_p=0.3, solarize_p=(0.0, 0.4)),),
    )
    image = np.broadcast_to(np.array([200, 140, 60], dtype=np.uint8), (40, 20, 3)).copy()
    views = run_views(spec, image, iterations=4)
    pixels = [view[:, :, 16, 8] * STD + MEAN for view in views]  # [N, 3] in [0, 1]
    for view_index, pixel in enumerate(pixels):
        gray = pixel.max(axis=1) - pixel.min(axis=1) < 2 / 255
        assert_rates_agree(gray, torch_rate(spec, view_index, lambda p: p.grayscale), 0.3)
    # red 200 >= 128 is inverted to 55 by solarize; gray keeps it >= 128 only when not solarized
    solarized = [pixel.max(axis=1) < 128 / 255 for pixel in pixels]
    assert not solarized[0].any()
    assert_rates_agree(solarized[1], torch_rate(spec, 1, lambda p: p.solarize), 0.4)


def test_blur_frequency_per_view_matches_torch():
    spec = MultiCropSpec(
        name="blur",
        groups=(
            CropSpec(
                count=2, size=(32, 16), random_crop=False, flip_p=0.0, blur_p=(0.9, 0.2), blur_sigma=(1, 2)
            ),
        ),
    )
    checkerboard = ((np.indices((32, 16)).sum(axis=0) % 2) * 255).astype(np.uint8)
    image = np.repeat(checkerboard[:, :, None], 3, axis=2)
    for view_index, view in enumerate(run_views(spec, image, iterations=4)):
        contrast = np.abs(np.diff(view[:, 0], axis=-1)).mean(axis=(1, 2)) * STD[0] * 255
        assert ((contrast > 200) | (contrast < 60)).all()  # sigma >= 1 flattens a 1-pixel checkerboard
        probability = spec.groups[0].blur_prob(view_index)
        rate = torch_rate(spec, view_index, lambda p: p.blur_sigma is not None)
        assert_rates_agree(contrast < 60, rate, probability)


def test_erase_frequency_and_area_match_torch():
    group = CropSpec(count=1, size=(32, 16), random_crop=False, flip_p=0.0, erase_p=0.5)
    spec = MultiCropSpec(name="erase", groups=(group,))
    image = np.full((32, 16, 3), 200, dtype=np.uint8)
    erased_pixels = (run_views(spec, image, iterations=4)[0] == 0).all(axis=1).sum(axis=(1, 2))
    assert_rates_agree(erased_pixels > 0, torch_rate(spec, 0, lambda p: p.erase_box is not None), 0.5)
    views = TorchMultiCrop(spec, seed=0)
    torch_boxes = [p.erase_box for _ in range(2000) for p in views.sample_params((32, 16)) if p.erase_box]
    torch_areas = np.array([box[2] * box[3] for box in torch_boxes], dtype=float)
    dali_areas = erased_pixels[erased_pixels > 0].astype(float)
    sigma = math.sqrt(dali_areas.var() / len(dali_areas) + torch_areas.var() / len(torch_areas))
    assert abs(dali_areas.mean() - torch_areas.mean()) < 4 * sigma


def measured_boxes(views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop width and height (source pixels) from views of the R = 4x, G = 2y image, by the slope of the
    middle half of each view (away from the box edges, where resampling reaches outside the box)."""
    rgb = views * STD.reshape(1, 3, 1, 1) + MEAN.reshape(1, 3, 1, 1)
    height, width = views.shape[2:]
    red = rgb[:, 0, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] * 255
    green = rgb[:, 1, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] * 255
    slope_x = np.polyfit(np.arange(red.shape[2]), red.mean(axis=1).T, 1)[0]
    slope_y = np.polyfit(np.arange(green.shape[1]), green.mean(axis=2).T, 1)[0]
    return slope_x * width / 4, slope_y * height / 2


@pytest.mark.parametrize(("scale", "ratio"), [((0.05, 0.8), (0.4, 0.6)), ((0.8, 1.0), (0.4, 0.6))])
def test_crop_area_and_aspect_distributions_match_torch(scale, ratio):
    x, y = np.meshgrid(np.arange(64), np.arange(128))
    image = np.stack([4 * x, 2 * y, np.zeros_like(x)], axis=-1).astype(np.uint8)  # 128×64, a 2:1 person box
    spec = MultiCropSpec(
        name="crop", groups=(CropSpec(count=2, size=(32, 16), scale=scale, ratio=ratio, flip_p=0),)
    )
    views = np.concatenate(run_views(spec, image, iterations=4))
    box_w, box_h = measured_boxes(views)
    generator = torch.Generator().manual_seed(0)
    torch_boxes = np.array(
        [sample_resized_crop((128, 64), scale, ratio, generator) for _ in range(2000)], float
    )
    statistics = [
        (box_w * box_h / (128 * 64), torch_boxes[:, 2] * torch_boxes[:, 3] / (128 * 64)),
        (np.log(box_w / box_h), np.log(torch_boxes[:, 3] / torch_boxes[:, 2])),
    ]
    for dali_values, torch_values in statistics:
        sigma = math.sqrt(dali_values.var() / len(dali_values) + torch_values.var() / len(torch_values))
        assert abs(dali_values.mean() - torch_values.mean()) < 4 * sigma + 0.01 * abs(torch_values.mean())
        # two-sample Kolmogorov–Smirnov at α = 1e-4 (c(α) = sqrt(-ln(α/2)/2) ≈ 2.23)
        grid = np.sort(np.concatenate([dali_values, torch_values]))
        cdf_dali = np.searchsorted(np.sort(dali_values), grid, side="right") / len(dali_values)
        cdf_torch = np.searchsorted(np.sort(torch_values), grid, side="right") / len(torch_values)
        n, m = len(dali_values), len(torch_values)
        assert np.abs(cdf_dali - cdf_torch).max() < 2.23 * math.sqrt((n + m) / (n * m))


def test_cpu_device_refuses_gpu_images_and_unknown_devices():
    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def bad_device():
        images = fn.external_source(
            source=lambda: [np.zeros((8, 4, 3), np.uint8)] * 2, layout="HWC", batch=True
        )
        return tuple(dali_multicrop(images, flip_only(size=(8, 4)), device="tpu"))

    with pytest.raises(ValueError, match="device must be one of"):
        bad_device()


def test_brightness_contrast_factors_match_torch():
    # gray image, half 50 / half 150 (mean luma 100): out = b·(100 + c·(x − 100)), so the two output levels
    # give back b = (hi + lo)/200 and c = (hi − lo)/(100·b).
    group = CropSpec(
        count=1, size=(32, 16), random_crop=False, flip_p=0.0, color_jitter_p=0.8, saturation=0.0, hue=0.0
    )
    spec = MultiCropSpec(name="jitter", groups=(group,))
    image = np.full((32, 16, 3), 50, dtype=np.uint8)
    image[:, 8:] = 150
    red = run_views(spec, image, iterations=4)[0][:, 0] * STD[0] * 255 + MEAN[0] * 255
    low, high = red[:, 16, 2], red[:, 16, 13]
    brightness = (high + low) / 200
    contrast = (high - low) / (100 * brightness)
    jittered = (np.abs(brightness - 1) > 0.02) | (np.abs(contrast - 1) > 0.02)
    assert_rates_agree(jittered, torch_rate(spec, 0, lambda p: p.jitter is not None), 0.8)
    views = TorchMultiCrop(spec, seed=0)
    torch_jitter = np.array(
        [p.jitter for _ in range(2000) for p in views.sample_params((32, 16)) if p.jitter]
    )
    for dali_factor, torch_factor in [
        (brightness[jittered], torch_jitter[:, 0]),
        (contrast[jittered], torch_jitter[:, 1]),
    ]:
        assert dali_factor.min() > 0.6 - 0.02 and dali_factor.max() < 1.4 + 0.02
        sigma = math.sqrt(dali_factor.var() / len(dali_factor) + torch_factor.var() / len(torch_factor))
        assert abs(dali_factor.mean() - torch_factor.mean()) < 4 * sigma + 0.01


def test_gpu_graph_takes_only_cpu_named_arguments():
    """Defining the GPU graph (not running it) checks that every per-sample argument stays on the CPU."""

    @pipeline_def(batch_size=2, num_threads=1, device_id=0)
    def gpu_views():
        images = fn.external_source(
            source=lambda: [np.zeros((8, 4, 3), np.uint8)] * 2, layout="HWC", batch=True
        )
        views = dali_multicrop(images, cion_multicrop(num_local=2), device="gpu")
        views += dali_multicrop(images, moco_two_view(), device="gpu")
        assert [view.device for view in views] == ["gpu"] * 6
        return tuple(views)

    gpu_views()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_views_match_the_cpu_views_statistics():
    spec = cion_multicrop(num_local=2, global_size=(32, 16), local_size=(16, 8))
    ramp = np.broadcast_to(np.arange(0, 256, 8, dtype=np.uint8)[None, :, None], (64, 32, 3)).copy()
    gpu_views = run_views(spec, ramp, iterations=4, device="gpu")
    cpu_views = run_views(spec, ramp, iterations=4, device="cpu")
    for gpu_view, cpu_view in zip(gpu_views, cpu_views, strict=True):
        assert gpu_view.shape == cpu_view.shape and gpu_view.dtype == np.float32
        sigma = math.sqrt(gpu_view.mean(axis=(1, 2, 3)).var() * 2 / len(gpu_view))
        assert abs(gpu_view.mean() - cpu_view.mean()) < 4 * sigma + 0.02
