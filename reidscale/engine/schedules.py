"""Per-iteration schedules as pure functions of the optimizer step (resume needs nothing but the step).

Conventions (``step`` counts optimizer steps from 0, ``total`` is the number of steps of the run):

* ``warmup_cosine``: linear from ``start`` at step 0 towards ``base`` during ``warmup`` steps
  (``start + (base - start) · step / warmup``), then a half cosine from ``base`` at step ``warmup`` towards
  ``end``: ``end + (base - end) · (1 + cos(π · (step - warmup) / (total - warmup))) / 2``. Like DINO's
  scheduler, the last step is one increment short of ``end``.
* ``linear_warmup``: linear from ``start`` to ``end`` over ``warmup`` steps, then constant ``end``.
"""

from __future__ import annotations

import math

from reidscale.engine.config import OptimizerConfig, ScheduleConfig

SCHEDULE_KEYS: tuple[str, ...] = ("lr", "weight_decay", "momentum", "temperature")


def _check_step(step: int, total: int) -> None:
    if total < 1:
        raise ValueError(f"total must be >= 1 step, got {total}")
    if not 0 <= step < total:
        raise ValueError(f"step must be in [0, total={total}), got {step}")


def warmup_cosine(
    step: int, total: int, base: float, end: float, warmup: int = 0, start: float = 0.0
) -> float:
    """Value at ``step``: linear warm-up ``start → base`` over ``warmup`` steps, then cosine to ``end``."""
    _check_step(step, total)
    if warmup < 0 or warmup > total:
        raise ValueError(f"warmup must be in [0, total={total}], got {warmup}")
    if step < warmup:
        return start + (base - start) * step / warmup
    progress = (step - warmup) / (total - warmup)
    return end + (base - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear_warmup(step: int, total: int, start: float, end: float, warmup: int) -> float:
    """Value at ``step``: linear ``start → end`` over ``warmup`` steps, then ``end``."""
    _check_step(step, total)
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if step >= warmup:
        return end
    return start + (end - start) * step / warmup


def schedule_values(
    step: int, total: int, optimizer: OptimizerConfig, schedule: ScheduleConfig
) -> dict[str, float]:
    """This iteration's ``lr``, ``weight_decay``, ``momentum`` (EMA) and ``temperature``."""
    warmup = min(schedule.warmup_steps, total)
    wd_end = optimizer.weight_decay if schedule.weight_decay_end is None else schedule.weight_decay_end
    return {
        "lr": warmup_cosine(step, total, optimizer.lr, schedule.min_lr, warmup, schedule.warmup_start_lr),
        "weight_decay": warmup_cosine(step, total, optimizer.weight_decay, wd_end),
        "momentum": warmup_cosine(step, total, schedule.momentum_start, schedule.momentum_end),
        "temperature": linear_warmup(
            step,
            total,
            schedule.temperature_start,
            schedule.temperature_end,
            schedule.temperature_warmup_steps,
        ),
    }
