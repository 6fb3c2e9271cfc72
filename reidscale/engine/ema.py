"""EMA teacher update ``teacher ← m · teacher + (1 − m) · student``, also under ZeRO-3.

Under ZeRO-3 each rank holds a flat slice (``ds_tensor``) of every parameter, cut the same way for two
parameters of the same shape; when teacher and student are both partitioned the update is done slice by
slice without communication. Otherwise (a plain teacher next to a partitioned student, or mixed layouts)
the partitioned parameters are gathered with ``deepspeed.zero.GatheredParameters`` and the teacher's
partitions are written back from rank 0.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn


def _is_partitioned(param: nn.Parameter) -> bool:
    return hasattr(param, "ds_id")


def _shape(param: nn.Parameter) -> tuple[int, ...]:
    return tuple(param.ds_shape) if _is_partitioned(param) else tuple(param.shape)


def _pairs(teacher: nn.Module, student: nn.Module) -> list[tuple[nn.Parameter, nn.Parameter]]:
    t_named = list(teacher.named_parameters())
    s_named = list(student.named_parameters())
    if len(t_named) != len(s_named):
        raise ValueError(f"teacher has {len(t_named)} parameters but student has {len(s_named)}")
    for (t_name, t_param), (s_name, s_param) in zip(t_named, s_named, strict=True):
        if _shape(t_param) != _shape(s_param):
            raise ValueError(
                f"teacher parameter {t_name} {_shape(t_param)} does not match "
                f"student {s_name} {_shape(s_param)}"
            )
    return [(t, s) for (_, t), (_, s) in zip(t_named, s_named, strict=True)]


def _lerp_(target: torch.Tensor, source: torch.Tensor, momentum: float) -> None:
    target.mul_(momentum).add_(source.to(target.dtype), alpha=1.0 - momentum)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: every teacher parameter ← momentum · teacher + (1 − momentum) · student.

    Parameters are paired in ``named_parameters`` order and must have equal shapes. Buffers (e.g. BN
    running statistics) are not touched. ``momentum`` in [0, 1]: 1 keeps the teacher, 0 copies the student.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    pairs = _pairs(teacher, student)
    if all(_is_partitioned(t) and _is_partitioned(s) for t, s in pairs):
        for t_param, s_param in pairs:
            _lerp_(t_param.ds_tensor, s_param.ds_tensor, momentum)
        return
    partitioned = [p for pair in pairs for p in pair if _is_partitioned(p)]
    with _gathered(partitioned, teacher_partitioned=any(_is_partitioned(t) for t, _ in pairs)):
        for t_param, s_param in pairs:
            _lerp_(t_param.data, s_param.data, momentum)


def _gathered(params: list[nn.Parameter], teacher_partitioned: bool) -> Any:
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if teacher_partitioned else None)
