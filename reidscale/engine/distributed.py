"""The process group, initialised from whatever launcher started us, and always torn down.

deepspeed, torchrun and ``accelerate launch`` export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT; ``srun`` exports SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, which are copied to the torch
names here (MASTER_ADDR must then come from the sbatch script; MASTER_PORT defaults to 29500). A single
process started without a launcher gets a group of one on a free local port (DeepSpeed needs a group).

Backend: nccl when CUDA is available, gloo otherwise. Always leave through ``teardown`` (or use the
``distributed`` context manager): a rank that exits without destroying its group can abort at exit.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist

from reidscale.utils.dist import get_local_rank, get_rank, get_world_size

DEFAULT_MASTER_PORT = "29500"


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: global rank, world size, rank within the node, and the device it uses."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None


def _adopt_slurm_environment() -> None:
    """Copy srun's SLURM_* variables to the names torch reads when no launcher set those."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    os.environ["RANK"] = str(get_rank())
    os.environ["WORLD_SIZE"] = str(get_world_size())
    os.environ["LOCAL_RANK"] = str(get_local_rank())
    if int(os.environ["WORLD_SIZE"]) > 1 and "MASTER_ADDR" not in os.environ:
        raise ValueError(
            "srun started several tasks but MASTER_ADDR is not set: export it in the sbatch script, e.g. "
            "MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)"
        )
    os.environ.setdefault("MASTER_PORT", DEFAULT_MASTER_PORT)


def _single_process_environment() -> None:
    """A plain ``python script.py``: a group of one on a free local port (DeepSpeed needs a group)."""
    if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))


def default_backend() -> str:
    """nccl with CUDA, gloo on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def setup(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Initialise torch.distributed from the launcher's environment (a group of one without a launcher)."""
    _adopt_slurm_environment()
    world_size = get_world_size()
    local_rank = get_local_rank()
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        if world_size == 1:
            _single_process_environment()
        for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ValueError(
                    f"WORLD_SIZE={world_size} but {name} is not set: start with deepspeed, torchrun, srun or "
                    "accelerate launch (on a CPU machine: accelerate launch --multi_gpu --num_processes N)"
                )
        torch_dist.init_process_group(
            backend=backend or default_backend(), init_method="env://", timeout=timedelta(seconds=timeout_s)
        )
    used = torch_dist.get_backend() if torch_dist.is_initialized() else None
    return DistInfo(get_rank(), world_size, local_rank, device, used)


def teardown() -> None:
    """Destroy the process group if there is one (after a barrier, so no rank leaves early)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        try:
            torch_dist.barrier()
        finally:
            torch_dist.destroy_process_group()


@contextmanager
def distributed(backend: str | None = None) -> Iterator[DistInfo]:
    """``with distributed() as info:`` — set up from the environment, tear down on the way out."""
    info = setup(backend)
    failed = False
    try:
        yield info
    except BaseException:
        failed = True
        raise
    finally:
        if failed:  # other ranks may be gone: no barrier, just release the group
            if torch_dist.is_initialized():
                torch_dist.destroy_process_group()
        else:
            teardown()
