"""Per-parameter gradient clipping (DINO's ``clip_gradients``), on plain tensors and on DeepSpeed engines.

Each parameter tensor's gradient ``g`` is scaled by ``c = max_norm / (‖g‖₂ + 1e-6)`` when ``c < 1``.
Global-norm clipping is DeepSpeed's own (``gradient_clipping`` in the rendered JSON).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

EPS = 1e-6


def clip_coefficient(grad: Tensor, max_norm: float) -> float:
    """The factor per-parameter clipping applies to ``grad`` (1.0 when its norm is within ``max_norm``)."""
    coef = max_norm / (float(grad.detach().float().norm(2)) + EPS)
    return min(coef, 1.0)


@torch.no_grad()
def clip_per_param_(grads: Iterable[Tensor], max_norm: float) -> list[float]:
    """Scale each tensor of ``grads`` in place; returns the norms before clipping."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    norms = []
    for grad in grads:
        norms.append(float(grad.detach().float().norm(2)))
        grad.mul_(clip_coefficient(grad, max_norm))
    return norms


@torch.no_grad()
def clip_engine_per_param_(module: nn.Module, max_norm: float) -> list[float]:
    """Per-parameter clipping of a DeepSpeed engine's gradients after backward, before ``engine.step()``.

    ZeRO-3: each rank scales its own gradient partition; the squared norms of all partitions are summed
    with one all-reduce (padding is zero). Other stages: ``deepspeed.utils.safe_get_full_grad`` /
    ``safe_set_full_grad`` (collectives under ZeRO 1-2). Call on every rank. Returns the norms before
    clipping, in ``module.parameters()`` order of the trainable parameters.
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    params = [p for p in module.parameters() if p.requires_grad]
    if params and all(hasattr(p, "ds_id") for p in params):
        return _clip_zero3_partitions_(params, max_norm)
    from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

    norms = []
    for param in params:
        grad = safe_get_full_grad(param)
        if grad is None:
            continue
        norms.append(float(grad.float().norm(2)))
        coef = clip_coefficient(grad, max_norm)
        if coef < 1.0:
            safe_set_full_grad(param, grad * coef)
    return norms


def _clip_zero3_partitions_(params: list[nn.Parameter], max_norm: float) -> list[float]:
    from deepspeed.utils import safe_get_local_grad, safe_set_local_grad

    local = [safe_get_local_grad(p) for p in params]
    squares = torch.stack([g.float().pow(2).sum() for g in local])
    if torch_dist.is_initialized():
        torch_dist.all_reduce(squares)
    norms = squares.sqrt().tolist()
    for param, grad, norm in zip(params, local, norms, strict=True):
        coef = max_norm / (norm + EPS)
        if coef < 1.0:
            safe_set_local_grad(param, grad * coef)
    return norms
