"""EMA teacher update ``teacher ← m · teacher + (1 − m) · student``, also under ZeRO-3.

Under ZeRO-3 each rank holds a flat slice (``ds_tensor``) of every parameter, cut the same way for two
parameters of the same shape; when teacher and student are both partitioned the update is done slice by
slice without communication. Small parameters (DeepSpeed's persistent ones, below
``stage3_param_persistence_threshold``: biases, norms, small convolutions) also stay gathered between
steps, and the forward pass reads that full copy, not the slice: after the update those teacher parameters
are gathered again from their new slices (one all-gather). Otherwise (a plain teacher next to a
partitioned student, or mixed layouts) the partitioned parameters are gathered with
``deepspeed.zero.GatheredParameters`` and the teacher's partitions are written back from rank 0.

Precision: when the engine trains in bf16 it casts the whole objective, teacher included, and a bf16
teacher cannot follow a slow average: at momentum 0.9995 the step (1 − m)·(s − t) is below half a bf16
spacing of t (2⁻⁸ relative) unless s − t is about 8 % of t, so the teacher stops moving. ``ema_master``
keeps an fp32 copy of the teacher's values (this rank's slices under ZeRO-3); given to ``ema_update_``, the
average runs on that copy and the teacher receives its rounding. Checkpoint the copy with the run's
extra state.
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


def _lerp_(target: torch.Tensor, source: torch.Tensor, momentum: float, master: torch.Tensor | None) -> None:
    """target ← m·target + (1 − m)·source, on ``master`` (fp32) when given and then copied into target."""
    average = target if master is None else master
    average.mul_(momentum).add_(source.to(average.dtype), alpha=1.0 - momentum)
    if master is not None:
        target.copy_(master)


def _all_sliced(pairs: list[tuple[nn.Parameter, nn.Parameter]]) -> bool:
    return all(_is_partitioned(t) and _is_partitioned(s) for t, s in pairs)


@torch.no_grad()
def ema_master(teacher: nn.Module, student: nn.Module) -> list[torch.Tensor]:
    """fp32 copies of the teacher's values, one per parameter, as ``ema_update_`` updates them: this rank's
    slices when teacher and student are both partitioned by ZeRO-3, else the whole parameters."""
    pairs = _pairs(teacher, student)
    if _all_sliced(pairs):
        return [t.ds_tensor.detach().float().clone() for t, _ in pairs]
    partitioned = [t for t, _ in pairs if _is_partitioned(t)]
    with _gathered(partitioned, teacher_partitioned=False):
        return [t.data.detach().float().clone() for t, _ in pairs]


@torch.no_grad()
def ema_update_(
    teacher: nn.Module, student: nn.Module, momentum: float, master: list[torch.Tensor] | None = None
) -> None:
    """In place: every teacher parameter ← momentum · teacher + (1 − momentum) · student.

    Parameters are paired in ``named_parameters`` order and must have equal shapes. Buffers (e.g. BN
    running statistics) are not touched. ``momentum`` in [0, 1]: 1 keeps the teacher, 0 copies the student.
    ``master``: the fp32 copy of ``ema_master`` (see the module doc); the average is taken there and the
    teacher gets its value in the teacher's dtype.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    pairs = _pairs(teacher, student)
    masters: list[torch.Tensor | None] = [None] * len(pairs) if master is None else list(master)
    if len(masters) != len(pairs):
        raise ValueError(f"master holds {len(masters)} tensors, the teacher has {len(pairs)} parameters")
    if _all_sliced(pairs):
        for (t_param, s_param), copy in zip(pairs, masters, strict=True):
            _lerp_(t_param.ds_tensor, s_param.ds_tensor, momentum, copy)
        _regather([t_param for t_param, _ in pairs])
        return
    partitioned = [p for pair in pairs for p in pair if _is_partitioned(p)]
    with _gathered(partitioned, teacher_partitioned=any(_is_partitioned(t) for t, _ in pairs)):
        for (t_param, s_param), copy in zip(pairs, masters, strict=True):
            _lerp_(t_param.data, s_param.data, momentum, copy)


def _regather(params: list[nn.Parameter]) -> None:
    """Refresh the full copies that ZeRO-3 keeps of gathered (persistent) parameters from their slices: the
    copy is released (the slice is kept as it is) and gathered again. Every rank holds the same set."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    gathered = [param for param in params if param.ds_status == ZeroParamStatus.AVAILABLE]
    if gathered:
        gathered[0].partition(gathered, has_been_updated=False)
        gathered[0].all_gather(gathered)


def _gathered(params: list[nn.Parameter], teacher_partitioned: bool) -> Any:
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if teacher_partitioned else None)
