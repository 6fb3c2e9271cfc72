"""Per-step throughput: images/s per rank and in total, data-wait share, forward/backward/optimizer split,
peak memory (CUDA ``max_memory_allocated``, else the process's RSS high-water mark)."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as torch_dist

PHASES: tuple[str, ...] = ("data", "forward", "backward", "optimizer")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA allocator peak on a GPU, RSS high-water mark on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class StepTimer:
    """Wall time of each phase of one optimizer step; ``metrics`` turns it into the logged figures."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.images = 0
        self._start = time.perf_counter()

    def reset(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.images = 0
        self._start = time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` (synchronising CUDA so the split is honest)."""
        if name not in self.seconds:
            raise ValueError(f"phase must be one of {PHASES}, got {name!r}")
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[name] += time.perf_counter() - start

    def metrics(self, world_size: int = 1) -> dict[str, float]:
        """Throughput figures of the step so far (a SUM all-reduce for the total when world_size > 1)."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        per_rank = self.images / elapsed
        total = torch.tensor([per_rank], dtype=torch.float64, device=self.device)
        if world_size > 1:
            torch_dist.all_reduce(total)
        out = {
            "throughput/images_per_s_per_rank": per_rank,
            "throughput/images_per_s": float(total.item()),
            "throughput/data_wait_fraction": self.seconds["data"] / elapsed,
            "throughput/step_s": elapsed,
            "memory/peak_mb": peak_memory_mb(self.device),
        }
        out.update({f"time/{name}_s": self.seconds[name] for name in PHASES if name != "data"})
        return out
