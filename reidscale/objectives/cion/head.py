"""CION's projection head (as released, after DINO):

    x [B, D] → Linear(D, 2048) → GELU → Linear(2048, 2048) → GELU → Linear(2048, 256) → L2-normalise
             → prototypes: x̂ · (V_c / ‖V_c‖) for each of the C rows V_c of the last layer          [B, C]

``batchnorm=True`` puts a BatchNorm1d after each hidden Linear (before its GELU), DINO's ``use_bn_in_head``
option; the released CION head has none.

The last layer is a weight-normalised linear map without bias whose norm is fixed to 1, i.e. every output
is the cosine between the 256-d embedding and one prototype direction. It is written here as the row
normalisation it amounts to (no separate gain parameter to hold at 1 and keep out of the optimiser, which
also keeps the layer a plain parameter under ZeRO-3). ``prototypes_frozen`` stops its gradient: a frozen
layer gets zero gradients, so AdamW leaves its moments at zero and moves it only by weight decay, a common
scale of all rows that the row normalisation removes, so the prototype directions stay exactly as they are,
whichever ZeRO stage holds the optimizer's copy of them. Weights are drawn as in the released code from a
truncated normal of std 0.02 cut at ±2 (absolute, so 100 standard deviations: in effect a normal), biases
at 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HIDDEN_DIM = 2048
BOTTLENECK_DIM = 256
DEFAULT_PROTOTYPES = 65536  # the released code writes 65336, a typo for 2**16


class CionHead(nn.Module):
    """``forward(x [B, in_dim]) → [B, num_prototypes]`` raw head outputs (the loss applies temperatures).

    ``prototypes`` is the last layer's direction matrix [C, 256] (its rows are normalised when used);
    ``last_layer_parameters()`` what the first epoch keeps frozen; ``prototypes_frozen`` (set by the
    objective) cuts their gradient.
    """

    def __init__(
        self,
        in_dim: int,
        num_prototypes: int = DEFAULT_PROTOTYPES,
        hidden_dim: int = HIDDEN_DIM,
        bottleneck_dim: int = BOTTLENECK_DIM,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        sizes = {"in_dim": in_dim, "num_prototypes": num_prototypes, "hidden_dim": hidden_dim,
                 "bottleneck_dim": bottleneck_dim}  # fmt: skip
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CionHead: {name} must be a positive integer, got {value!r}")

        def hidden_norm() -> list[nn.Module]:
            return [nn.BatchNorm1d(hidden_dim)] if batchnorm else []

        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            *hidden_norm(),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            *hidden_norm(),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        self.prototypes_frozen = False

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The parameters of the weight-normalised last layer (frozen during the first epoch)."""
        return [self.prototypes]

    def forward(self, x: Tensor) -> Tensor:
        """[B, in_dim] → [B, C]: cosines between the normalised embedding and the prototype directions."""
        embedding = F.normalize(self.mlp(x), dim=-1)
        prototypes = self.prototypes.detach() if self.prototypes_frozen else self.prototypes
        return embedding @ F.normalize(prototypes, dim=-1).t()
