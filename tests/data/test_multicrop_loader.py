"""Decode → crop → multi-crop views (build_view_loader) on the PyAV + torch, DALI CPU and DALI GPU paths.

The test videos are 96×64, 30 frames, written here with PyAV. Frame t at pixel (x, y) holds
R = 40 + 2x (a left→right ramp), G = 128 + 80·sin(2πy/32), B = 20 + 7t. The ramp tells a mirrored view
from an unmirrored one: its red channel decreases from left to right.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reidscale.data.decode.loader import build_crop_loader, crops_by_record
from reidscale.data.decode.multicrop_loader import build_view_loader
from reidscale.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from reidscale.data.records import CropRecord
from reidscale.data.views.spec import cion_multicrop, flip_only
from tests.support.videos import CODECS, HEIGHT, NUM_FRAMES, WIDTH, write_codec_videos

BOXES = [(10, 5, 20, 40), (50, 20, 30, 30), (0, 0, 96, 64), (70, 10, 24, 50)]
FRAMES = [0, 4, 11, 19, 29]


def frame_pixels(frame: int) -> np.ndarray:
    """uint8 [H, W, 3]: the exact pixels the encoder is given for ``frame``."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    red, green = 40 + 2 * cols, 128 + 80 * np.sin(2 * np.pi * rows / 32)
    return np.rint(np.stack([red, green, np.full_like(cols, 20 + 7 * frame)], axis=-1)).astype(np.uint8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("views_videos")
    return write_codec_videos(folder, "ramp", frame_pixels)


def grid_records(path: str, frames: list[int] = FRAMES) -> list[CropRecord]:
    return [CropRecord(path, frame, box, pid=0) for frame in frames for box in BOXES]


def run_loader(loader, batch_size: int) -> tuple[list[int], list[list[torch.Tensor]]]:
    """All indices of one pass (in order) and the views of every batch; checks batch sizes on the way."""
    indices, batches = [], []
    for batch_indices, views in loader:
        assert batch_indices.dtype == torch.int64 and 1 <= len(batch_indices) <= batch_size
        assert all(len(view) == len(batch_indices) for view in views)
        indices.extend(batch_indices.tolist())
        batches.append(views)
    return indices, batches


def check_cion_views(loader, records: list[CropRecord], num_local: int, device: torch.device) -> None:
    indices, batches = run_loader(loader, batch_size=6)
    assert sorted(indices) == list(range(len(records))), "every record exactly once"
    assert loader.stats.crops == len(records) and loader.stats.skipped == {}
    expected = [(256, 128)] * 2 + [(128, 64)] * num_local
    low, high = (0 - max(IMAGENET_MEAN)) / min(IMAGENET_STD), (1 - min(IMAGENET_MEAN)) / min(IMAGENET_STD)
    for views in batches:
        assert [tuple(view.shape[2:]) for view in views] == expected
        for view in views:
            assert view.dtype == torch.float32 and view.shape[1] == 3 and view.device == device
            assert torch.isfinite(view).all() and low - 1e-4 <= view.min() and view.max() <= high + 1e-4


@pytest.mark.parametrize(("backend", "codec"), [("pyav", "h264"), ("pyav", "mjpeg")])
def test_pyav_torch_views_cion_shapes_and_coverage(videos, backend, codec) -> None:
    records = grid_records(videos[codec], FRAMES[:3])
    loader = build_view_loader(records, 6, cion_multicrop(num_local=2), backend=backend, seed=0)
    assert loader.view_backend == "torch"
    check_cion_views(loader, records, num_local=2, device=torch.device("cpu"))


@pytest.mark.dali
@pytest.mark.parametrize("backend", ["dali", "auto"])
def test_dali_cpu_views_cion_shapes_and_coverage(videos, backend) -> None:
    pytest.importorskip("nvidia.dali")
    # "auto" sends the H.264 video to PyAV and the VP9/MJPEG ones to DALI; views come from DALI for all.
    codecs = ["vp9", "mjpeg"] + (["h264"] if backend == "auto" else [])
    records = [record for codec in codecs for record in grid_records(videos[codec], FRAMES[:2])]
    loader = build_view_loader(records, 6, "cion", backend=backend, seed=0)
    assert loader.view_backend == "dali" and len(loader.spec.groups[1:]) == 1
    check_cion_views(loader, records, num_local=8, device=torch.device("cpu"))


def assert_views_are_crops_or_mirrors(loader, crops: dict[int, np.ndarray], tolerance: float) -> np.ndarray:
    """Every flip-only view equals its crop or the crop mirrored; returns the flip flag per view."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    flips, seen = [], []
    for indices, (views,) in loader:
        pixels = ((views.cpu() * std + mean) * 255.0).permute(0, 2, 3, 1).numpy()
        for index, view in zip(indices.tolist(), pixels, strict=True):
            crop = crops[index].astype(np.float64)
            plain, mirrored = np.abs(view - crop).max(), np.abs(view - crop[:, ::-1]).max()
            assert min(plain, mirrored) <= tolerance, f"record {index}: errors {plain:.2f}, {mirrored:.2f}"
            # The ramp makes a crop and its mirror differ by >= 2 grey levels somewhere (box width >= 20).
            flips.append(mirrored < plain)
            seen.append(index)
    assert sorted(seen) == sorted(crops)
    return np.array(flips)


def check_flip_statistics(flips: np.ndarray) -> None:
    """Flip p=0.5: binomial proportion within 4.5 standard deviations (false alarm ~7e-6)."""
    count = len(flips)
    assert abs(flips.mean() - 0.5) <= 4.5 * math.sqrt(0.25 / count), f"{flips.sum()} of {count} flipped"


FLIP_SIZE = (24, 16)


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_flip_only_torch_views_are_crops_or_mirrors_half_the_time(videos, codec) -> None:
    records = grid_records(videos[codec], list(range(0, NUM_FRAMES, 2)))
    crops = crops_by_record(build_crop_loader(records, 16, FLIP_SIZE, backend="pyav"))
    loader = build_view_loader(records, 16, flip_only(FLIP_SIZE), backend="pyav", seed=1)
    # Same-size resize is the identity; normalise + un-normalise in float32 costs < 1e-3 grey levels.
    check_flip_statistics(assert_views_are_crops_or_mirrors(loader, crops, tolerance=0.01))


@pytest.mark.dali
def test_flip_only_dali_cpu_views_are_crops_or_mirrors_half_the_time(videos) -> None:
    pytest.importorskip("nvidia.dali")
    records = grid_records(videos["mjpeg"], list(range(NUM_FRAMES)))
    crops = crops_by_record(build_crop_loader(records, 16, FLIP_SIZE, backend="dali"))
    loader = build_view_loader(records, 16, flip_only(FLIP_SIZE), backend="dali", seed=1)
    assert loader.view_backend == "dali"
    flips = assert_views_are_crops_or_mirrors(loader, crops, tolerance=0.01)
    check_flip_statistics(flips)


def test_mean_over_many_views_of_a_ramp_is_symmetric(videos) -> None:
    records = [
        CropRecord(videos["mjpeg"], frame, (0, 0, WIDTH, HEIGHT), pid=0) for frame in range(NUM_FRAMES)
    ]
    records = records * 8  # 240 views of the full-frame ramp
    loader = build_view_loader(records, 48, flip_only(FLIP_SIZE), backend="pyav", seed=2)
    red_sum, count = torch.zeros(FLIP_SIZE[1], dtype=torch.float64), 0
    for _, (views,) in loader:
        red = views[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        red_sum += red.mean(dim=1).sum(dim=0).double()
        count += len(views)
    profile = red_sum / count * 255.0
    # Unflipped columns run 40 → 230; with f of n views flipped, profile[c] − profile[−1−c] equals
    # (1 − 2f/n)·(ramp[c] − ramp[−1−c]), at most 190·4.5·sqrt(0.25/n) for a 4.5σ band on f.
    bound = 190 * 4.5 * math.sqrt(0.25 / count) + 1.0
    assert (profile - profile.flip(0)).abs().max() <= bound
    assert abs(profile.mean() - 135.0) <= 3.0  # the ramp's mean, mirrored or not


def test_bad_arguments_are_named(videos) -> None:
    records = grid_records(videos["mjpeg"], [0])
    with pytest.raises(ValueError, match="unknown multi-crop recipe"):
        build_view_loader(records, 4, "simclr")
    with pytest.raises(ValueError, match="view_backend"):
        build_view_loader(records, 4, "flip", view_backend="opencv")
    with pytest.raises(ValueError, match="backend"):
        build_view_loader(records, 4, "flip", backend="ffmpeg")
    with pytest.raises(TypeError, match="spec"):
        build_view_loader(records, 4, 3)
    with pytest.raises(ValueError, match="batch_size"):
        build_view_loader(records, 0, "flip")


@pytest.mark.gpu
@pytest.mark.dali
def test_gpu_views_stay_on_the_gpu(videos) -> None:
    pytest.importorskip("nvidia.dali")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    records = [record for codec in CODECS for record in grid_records(videos[codec], FRAMES[:2])]
    loader = build_view_loader(records, 6, cion_multicrop(num_local=2), backend="dali", device="gpu", seed=0)
    assert loader.view_backend == "dali"
    check_cion_views(loader, records, num_local=2, device=torch.device("cuda", torch.cuda.current_device()))
    flip_records = grid_records(videos["h264"], list(range(NUM_FRAMES)))
    crops = crops_by_record(build_crop_loader(flip_records, 16, FLIP_SIZE, backend="dali", device="gpu"))
    flip_loader = build_view_loader(flip_records, 16, flip_only(FLIP_SIZE), backend="dali", device="gpu")
    check_flip_statistics(assert_views_are_crops_or_mirrors(flip_loader, crops, tolerance=0.01))
