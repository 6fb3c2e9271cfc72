"""MultiCropWrapper against the backbone called on each crop separately (float64), the number and sizes of
backbone calls per run of equal resolutions, the head applied once, and the argument errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from reidscale.models import MultiCropWrapper, split_crops
from reidscale.models.multicrop import resolution_runs


class TinyConvNet(nn.Module):
    """conv → ReLU → global average pool: [N, 3, H, W] → [N, 6] for any H, W; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, images: Tensor) -> Tensor:
        self.calls.append(tuple(images.shape))
        return torch.relu(self.conv(images)).mean(dim=(2, 3))


def make_crops(sizes: list[tuple[int, int]], batch: int = 3, seed: int = 0) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, h, w, generator=gen, dtype=torch.float64) for h, w in sizes]


G, L = (32, 16), (16, 8)


@pytest.mark.parametrize(
    ("sizes", "runs"),
    [
        ([G, G, L, L, L, L], [(0, 2), (2, 6)]),
        ([G, G, L, L, L, G], [(0, 2), (2, 5), (5, 6)]),
        ([L, G, L], [(0, 1), (1, 2), (2, 3)]),
        ([G], [(0, 1)]),
    ],
)
def test_equals_the_backbone_per_crop_with_one_call_per_resolution_run(sizes, runs) -> None:
    torch.manual_seed(0)
    backbone = TinyConvNet().double()
    crops = make_crops(sizes)
    expected = torch.cat([backbone(crop) for crop in crops])
    backbone.calls.clear()
    wrapper = MultiCropWrapper(backbone)
    features = wrapper(crops)
    assert features.shape == (3 * len(sizes), 6) and features.dtype == torch.float64
    torch.testing.assert_close(features, expected, rtol=1e-12, atol=1e-12)
    assert resolution_runs(crops) == runs
    assert backbone.calls == [(3 * (stop - start), 3, *sizes[start]) for start, stop in runs]
    for crop, part in zip(crops, split_crops(features, len(crops)), strict=True):
        torch.testing.assert_close(part, backbone(crop), rtol=1e-12, atol=1e-12)


def test_head_runs_once_on_all_features() -> None:
    torch.manual_seed(1)
    backbone, head = TinyConvNet().double(), nn.Linear(6, 4).double()
    head_calls: list[tuple[int, ...]] = []
    head.register_forward_hook(lambda module, inputs, output: head_calls.append(tuple(inputs[0].shape)))
    crops = make_crops([G, G, L, L], batch=2, seed=2)
    expected = head(torch.cat([backbone(crop) for crop in crops]))
    head_calls.clear()
    out = MultiCropWrapper(backbone, head)(crops)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert head_calls == [(8, 6)] and out.shape == (8, 4)
    out.sum().backward()  # gradients reach the backbone through the concatenation
    assert backbone.conv.weight.grad is not None and bool(backbone.conv.weight.grad.abs().sum() > 0)


def test_a_single_tensor_is_one_crop() -> None:
    backbone = TinyConvNet().double()
    crop = make_crops([G])[0]
    torch.testing.assert_close(MultiCropWrapper(backbone)(crop), backbone(crop))


def test_errors_name_the_argument() -> None:
    wrapper = MultiCropWrapper(TinyConvNet().double())
    with pytest.raises(ValueError, match="crops must be a non-empty list"):
        wrapper([])
    with pytest.raises(ValueError, match=r"crops must share batch size.*crops\[2\] of shape \(2, 3, 16, 8\)"):
        wrapper([*make_crops([G, G], batch=3), *make_crops([L], batch=2)])
    with pytest.raises(ValueError, match=r"crops\[1\] must be a \[B, C, H, W\] tensor, got \(3, 32, 16\)"):
        wrapper([make_crops([G])[0], torch.zeros(3, 32, 16)])
    with pytest.raises(ValueError, match="num_crops must be >= 1 and divide"):
        split_crops(torch.zeros(7, 2), 2)
    with pytest.raises(ValueError, match=r"backbone must be an nn\.Module"):
        MultiCropWrapper(lambda x: x)
    flat = MultiCropWrapper(nn.Flatten(0))  # [N, ...] → [N·...]: not one row per image
    with pytest.raises(ValueError, match=r"backbone must map \[N, C, H, W\] to a tensor \[N, \.\.\.\]"):
        flat(make_crops([L]))
