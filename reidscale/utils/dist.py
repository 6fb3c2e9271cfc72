"""Rank and world size as launchers (deepspeed, torchrun, accelerate, srun) publish them."""

from __future__ import annotations

import os


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip() != "":
            try:
                return int(value)
            except ValueError as err:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from err
    return default


def get_rank() -> int:
    """Global rank: from an initialised torch.distributed group, else RANK / SLURM_PROCID, else 0."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank()
    return _env_int("RANK", "SLURM_PROCID", default=0)


def get_world_size() -> int:
    """World size: from an initialised torch.distributed group, else WORLD_SIZE / SLURM_NTASKS, else 1."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_world_size()
    return _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)


def get_local_rank() -> int:
    """Rank within the node: LOCAL_RANK (deepspeed, torchrun, accelerate) / SLURM_LOCALID, else 0."""
    return _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)


def get_local_world_size() -> int:
    """Processes on this node: LOCAL_WORLD_SIZE (torchrun, accelerate) / LOCAL_SIZE (deepspeed), else 1."""
    return _env_int("LOCAL_WORLD_SIZE", "LOCAL_SIZE", default=1)
