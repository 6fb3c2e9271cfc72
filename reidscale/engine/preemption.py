"""SIGTERM / SIGINT (SLURM preemption, ``scancel``, a cluster's time limit, Ctrl-C) → a flag the trainer
polls at step ends.

The first signal only sets a flag; the trainer saves a checkpoint at the next step boundary and returns,
and the job reports the run as stopped. The flag is OR-reduced over ranks there (a signal may reach one
rank first), so all ranks save and stop together. Stopping must finish within a grace period: when it has
not (a step or the save hangs), or when a second signal arrives, the process stops at once
(``SystemExit(128 + signal)``), leaving the previous complete checkpoint in force.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

import torch
import torch.distributed as torch_dist

#: the signals that ask a run to stop
STOP_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)


class PreemptionFlag:
    """Installs handlers for ``signals`` on ``install()`` and restores the previous ones on ``restore()``.

    grace_s: after the first signal, seconds allowed before the process stops at once (0 = no limit).
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS, grace_s: float = 0.0) -> None:
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        self.signals = signals
        self.grace_s = grace_s
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # a second signal: stop now
            raise SystemExit(128 + signum)
        self.received = signum
        if self.grace_s > 0:
            signal.setitimer(signal.ITIMER_REAL, self.grace_s)

    def _grace_over(self, signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + (self.received or signal.SIGTERM))

    def install(self) -> PreemptionFlag:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        if self.grace_s > 0:
            self._previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._grace_over)
        return self

    def restore(self) -> None:
        if signal.SIGALRM in self._previous:
            signal.setitimer(signal.ITIMER_REAL, 0)
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
