"""Run a test scenario on two gloo ranks in spawned processes and collect what each rank returned."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.support.ports import free_port


def _worker(rank: int, world_size: int, port: int, out: str, scenario: Callable[[int, int], Any]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.save(scenario(rank, world_size), Path(out) / f"rank{rank}.pt")
    finally:
        dist.barrier()
        dist.destroy_process_group()


def run_on_two_ranks(scenario: Callable[[int, int], Any], out: Path) -> list[Any]:
    """``scenario(rank, world_size)`` on 2 gloo ranks (spawned processes; ``scenario`` must be a module-level
    function); returns what each rank returned, in rank order (saved under ``out``)."""
    mp.spawn(_worker, args=(2, free_port(), str(out), scenario), nprocs=2, join=True)
    return [torch.load(out / f"rank{rank}.pt") for rank in range(2)]
