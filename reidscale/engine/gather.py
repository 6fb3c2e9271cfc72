"""Full copies of parameters that ZeRO-3 partitions over the ranks."""

from __future__ import annotations

import torch
from torch import nn


def gathered_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """A full float32 CPU copy of ``module.state_dict()``, gathering ZeRO-3 partitioned parameters first
    (*collective* under ZeRO-3: every rank calls it)."""
    params = list(module.parameters())
    if any(hasattr(param, "ds_id") for param in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {name: value.detach().float().cpu().clone() for name, value in module.state_dict().items()}
    return {name: value.detach().float().cpu().clone() for name, value in module.state_dict().items()}
