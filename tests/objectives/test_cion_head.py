"""CION's head: the released layer sizes, outputs that are cosines to unit prototype directions (the
weight-normalised last layer with its norm at 1), its initialisation and its refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reidscale.objectives.cion import DEFAULT_PROTOTYPES, CionHead


def test_the_layers_are_the_released_ones_and_the_default_is_2_to_the_16() -> None:
    head = CionHead(2048, num_prototypes=64)
    linears = [layer for layer in head.mlp if isinstance(layer, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [
        (2048, 2048),
        (2048, 2048),
        (2048, 256),
    ]
    assert [type(layer).__name__ for layer in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert head.prototypes.shape == (64, 256) and head.last_layer_parameters() == [head.prototypes]
    assert DEFAULT_PROTOTYPES == 2**16
    with_bn = CionHead(32, num_prototypes=8, hidden_dim=16, bottleneck_dim=4, batchnorm=True)
    assert [type(layer).__name__ for layer in with_bn.mlp] == [
        "Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU", "Linear",
    ]  # fmt: skip


def test_outputs_are_cosines_to_the_prototype_directions_whatever_their_norms() -> None:
    torch.manual_seed(0)
    head = CionHead(12, num_prototypes=7, hidden_dim=16, bottleneck_dim=5).double()
    x = torch.randn(4, 12, dtype=torch.float64)
    embedding = head.mlp(x)
    expected = torch.stack(
        [torch.stack([F.cosine_similarity(e, v, dim=0) for v in head.prototypes]) for e in embedding]
    )
    out = head(x)
    assert torch.allclose(out, expected, atol=1e-12) and out.abs().max() <= 1
    with torch.no_grad():
        head.prototypes.mul_(torch.arange(1, 8, dtype=torch.float64)[:, None])  # the norm stays fixed at 1
    assert torch.allclose(head(x), expected, atol=1e-12)


def test_initialisation() -> None:
    torch.manual_seed(1)
    head = CionHead(512, num_prototypes=4096)
    weights = torch.cat([head.mlp[0].weight.flatten(), head.prototypes.flatten()])
    assert weights.std().item() == pytest.approx(0.02, rel=0.02) and weights.abs().max() <= 2
    assert all(
        torch.count_nonzero(layer.bias) == 0 for layer in head.mlp if isinstance(layer, torch.nn.Linear)
    )
    assert math.isclose(weights.mean().item(), 0.0, abs_tol=1e-3)


@pytest.mark.parametrize("field", ["in_dim", "num_prototypes", "hidden_dim", "bottleneck_dim"])
def test_sizes_must_be_positive(field: str) -> None:
    sizes = {"in_dim": 8, "num_prototypes": 4, "hidden_dim": 8, "bottleneck_dim": 4, field: 0}
    with pytest.raises(ValueError, match=f"CionHead: {field} must be a positive integer, got 0"):
        CionHead(**sizes)
