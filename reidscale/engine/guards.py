"""Non-finite loss guard: checked before the optimizer step and agreed on by every rank.

Each rank reports which of its loss parts (and the total) are non-finite; a SUM all-reduce of the
``[world, parts + 1]`` flag matrix gives every rank the same picture, so all ranks skip (or stop) together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import Tensor

TOTAL = "loss"


class NonFiniteLossError(RuntimeError):
    """Raised under ``nan_policy='stop'`` after the checkpoint was written."""


@dataclass(frozen=True)
class NonFiniteReport:
    """Which loss parts were non-finite on which ranks at ``step``."""

    step: int
    bad: dict[int, list[str]]

    def message(self) -> str:
        where = "; ".join(f"rank {rank}: {', '.join(parts)}" for rank, parts in sorted(self.bad.items()))
        return f"non-finite loss at step {self.step} ({where})"


def _local_flags(loss: Tensor, parts: dict[str, Tensor], names: list[str]) -> Tensor:
    """1.0 where the part is not finite.  Returns (len(names),) float32 on the loss's device."""
    values = [loss if name == TOTAL else parts[name] for name in names]
    return torch.stack([~torch.isfinite(value.detach().float()).all() for value in values]).float()


def check_finite(
    loss: Tensor, parts: dict[str, Tensor], step: int, rank: int = 0, world_size: int = 1
) -> NonFiniteReport | None:
    """None when the loss and every part are finite on every rank, else the report (same on all ranks).

    loss: scalar; parts: name → tensor (any shape). All ranks must pass the same part names (a collective).
    """
    if TOTAL in parts:
        raise ValueError(f"loss part name {TOTAL!r} is reserved for the total loss; rename the part")
    names = [TOTAL, *sorted(parts)]
    flags = torch.zeros(world_size, len(names), device=loss.device)
    flags[rank] = _local_flags(loss, parts, names)
    if world_size > 1:
        torch_dist.all_reduce(flags)
    if not bool(flags.any()):
        return None
    bad: dict[int, list[str]] = {}
    for bad_rank, column in flags.nonzero().tolist():
        bad.setdefault(bad_rank, []).append(names[column])
    return NonFiniteReport(step, bad)
