"""Launcher smoke test: do the launcher's environment variables reach reidscale, and can the ranks talk?

Start it exactly like training (deepspeed / torchrun / accelerate launch / srun, see launch/README.md). Each
rank reads its rank and world size with ``reidscale.utils.dist`` *before* any process group exists (so from
RANK / WORLD_SIZE or SLURM_PROCID / SLURM_NTASKS), initialises a process group with them (``env://``:
MASTER_ADDR / MASTER_PORT), all-reduces its rank, checks the group agrees with the environment and that the
sum is 0 + 1 + ... + (W - 1), prints one JSON line, and destroys the group. Exit status 1 on a mismatch.

    torchrun --standalone --nproc_per_node 2 launch/check_world.py            # CPU, gloo
    srun python launch/check_world.py --backend nccl                          # one task per GPU
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as torch_dist

from reidscale.utils.dist import get_rank, get_world_size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("gloo", "nccl"), default="gloo", help="collective backend")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="process-group timeout in seconds")
    return parser.parse_args(argv)


def local_rank() -> int:
    """LOCAL_RANK (deepspeed, torchrun, accelerate) or SLURM_LOCALID (srun), else 0."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))


def check_world(backend: str, timeout_s: float) -> dict:
    """Init the group from the environment, all-reduce the ranks, tear down; the findings as a dict."""
    env_rank, env_world = get_rank(), get_world_size()
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"{name} is not set: start this script with a launcher (see launch/README.md)")
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    torch_dist.init_process_group(
        backend,
        init_method="env://",
        rank=env_rank,
        world_size=env_world,
        timeout=timedelta(seconds=timeout_s),
    )
    try:
        rank_sum = torch.tensor([env_rank], dtype=torch.int64, device=device)
        torch_dist.all_reduce(rank_sum)
        report = {
            "rank": get_rank(),
            "world_size": get_world_size(),
            "env_rank": env_rank,
            "env_world_size": env_world,
            "local_rank": local_rank(),
            "rank_sum": int(rank_sum.item()),
            "backend": torch_dist.get_backend(),
            "host": socket.gethostname(),
        }
        torch_dist.barrier()
    finally:
        torch_dist.destroy_process_group()
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = check_world(args.backend, args.timeout_s)
    world = report["world_size"]
    report["ok"] = (
        report["rank"] == report["env_rank"]
        and world == report["env_world_size"]
        and report["rank_sum"] == world * (world - 1) // 2
    )
    print(json.dumps(report, sort_keys=True), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
