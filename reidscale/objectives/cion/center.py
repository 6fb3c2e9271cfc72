"""The centre of the teacher outputs: c ← m·c + (1 − m)·(mean of every rank's teacher outputs this step)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


@torch.no_grad()
def update_center(center: Tensor, teacher_out: Tensor, momentum: float = 0.9) -> Tensor:
    """The next centre (the argument is not modified).

    Args:
        center: [C] (or [1, C]) the running centre, fp32.
        teacher_out: [R, C] this rank's raw teacher outputs of the step (all global views).
        momentum: m in [0, 1].

    Returns:
        The new centre with ``center``'s shape and dtype: the mean is over the rows of every rank (summed and
        counted with one all-reduce each when a process group is up, so ranks with different row counts are
        weighted by rows), identical on all ranks.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    if teacher_out.dim() != 2 or teacher_out.shape[1] != center.numel():
        raise ValueError(
            f"teacher_out must be [R, C] with C = {center.numel()} (the centre's size), "
            f"got {list(teacher_out.shape)}"
        )
    total = teacher_out.float().sum(dim=0)
    rows = torch.tensor([teacher_out.shape[0]], dtype=torch.float32, device=total.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
        dist.all_reduce(rows)
    mean = (total / rows).reshape(center.shape)
    return (momentum * center.float() + (1.0 - momentum) * mean).to(center.dtype)
