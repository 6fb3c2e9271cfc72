"""SIGTERM (SLURM preemption, ``scancel``, a cluster's time limit) → a flag the trainer polls at step ends.

The handler only sets a flag; the trainer saves a checkpoint at the next step boundary and returns. The
flag is OR-reduced over ranks there (a signal may reach one rank first), so all ranks save and stop
together.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

import torch
import torch.distributed as torch_dist


class PreemptionFlag:
    """Installs handlers for ``signals`` on ``install()`` and restores the previous ones on ``restore()``."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def install(self) -> PreemptionFlag:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> PreemptionFlag:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def agreed(self, world_size: int = 1, device: torch.device | None = None) -> bool:
        """True on every rank when any rank received a signal (a collective when world_size > 1)."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device)
        if world_size > 1:
            torch_dist.all_reduce(flag)
        return bool(flag.item() > 0)
