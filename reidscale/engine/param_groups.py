"""Optimizer parameter groups: weight decay on weights, none on biases and norms (``no_weight_decay``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reidscale.objectives.base import no_weight_decay

#: key in each param group telling the engine whether the weight-decay schedule applies to it
DECAY_KEY = "apply_weight_decay"


def build_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups over ``model``'s trainable parameters: ``decay`` (weight_decay) and ``no_decay`` (0).

    Frozen parameters (requires_grad False, e.g. an EMA teacher) are left out. Empty groups are dropped;
    each group carries ``name`` and ``apply_weight_decay`` for the schedule.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if no_weight_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay", DECAY_KEY: True},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay", DECAY_KEY: False},
    ]
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return groups


class _SkippableStep:
    """Mixin: ``skip_next_step = True`` makes the next ``step()`` a no-op (the NaN guard's skip policy).

    DeepSpeed's ZeRO and bf16 wrappers call the base optimizer's ``step`` and copy its fp32 weights back,
    so skipping here leaves weights and optimizer state untouched at every ZeRO stage.
    """

    skip_next_step: bool = False

    def step(self, closure: Any = None) -> Any:
        if self.skip_next_step:
            self.skip_next_step = False
            return None
        return super().step(closure)  # type: ignore[misc]


class SkippableAdamW(_SkippableStep, torch.optim.AdamW):
    """torch AdamW whose next step can be skipped."""


class SkippableSGD(_SkippableStep, torch.optim.SGD):
    """torch SGD whose next step can be skipped."""


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """A torch AdamW or SGD over ``build_param_groups(model, weight_decay)`` (skippable, see above)."""
    groups = build_param_groups(model, weight_decay)
    if name == "adamw":
        return SkippableAdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    if name == "sgd":
        return SkippableSGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    raise ValueError(f"optimizer name must be 'adamw' or 'sgd', got {name!r}")


def apply_schedule(optimizer: Any, values: dict[str, float]) -> None:
    """Set ``lr`` on every group and ``weight_decay`` on the decaying groups of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = values["lr"]
        group["weight_decay"] = values["weight_decay"] if group.get(DECAY_KEY, True) else 0.0
