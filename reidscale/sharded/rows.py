"""Row sharding of memory banks over the ranks, and the three collectives a sharded bank needs.

Rank ``r`` of ``W`` owns the contiguous rows ``[r·N // W, (r+1)·N // W)`` of an N-row bank. With one rank
(or no process group) every function here is a local operation, so the same code runs unsharded.

- :func:`gather_batches`: every rank's equally sized batch, concatenated in rank order (all-gather).
- :func:`merge_sharded_topk`: each rank's top-k over its own rows, for every rank's queries, merged into the
  exact global top-k of this rank's queries (one all-to-all of ``[B, k]`` scores and indices per rank).
- :func:`fetch_rows`: rows of a sharded bank by global index, wherever they live (two all-to-alls).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import Tensor

from reidscale.kernels.chunked_topk import sort_by_score_then_index


@dataclass(frozen=True)
class RowShards:
    """The block partition of ``num_rows`` bank rows over ``world_size`` ranks, seen from ``rank``."""

    num_rows: int
    world_size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        if self.num_rows < 1:
            raise ValueError(f"num_rows must be >= 1, got {self.num_rows}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={self.rank}, world_size={self.world_size}"
            )

    def bounds(self, rank: int) -> tuple[int, int]:
        """``(start, stop)`` of the rows ``rank`` owns."""
        return rank * self.num_rows // self.world_size, (rank + 1) * self.num_rows // self.world_size

    @property
    def start(self) -> int:
        return self.bounds(self.rank)[0]

    @property
    def stop(self) -> int:
        return self.bounds(self.rank)[1]

    @property
    def size(self) -> int:
        """Rows this rank owns."""
        return self.stop - self.start

    def owner(self, indices: Tensor) -> Tensor:
        """Owning rank of each global row index (int64, same shape); indices must lie in [0, num_rows)."""
        starts = torch.tensor(
            [self.bounds(r)[0] for r in range(1, self.world_size)], dtype=torch.int64, device=indices.device
        )
        return torch.bucketize(indices, starts, right=True)

    def owned(self, indices: Tensor) -> Tensor:
        """Bool mask: which global indices this rank owns (−1 padding is never owned)."""
        return (indices >= self.start) & (indices < self.stop)


def _distributed(world_size: int) -> bool:
    return world_size > 1 and torch_dist.is_available() and torch_dist.is_initialized()


def _wire_dtype(tensor: Tensor) -> Tensor:
    """gloo reduces no bfloat16 in some collectives; send bf16 as fp32 there (exact)."""
    if tensor.dtype == torch.bfloat16 and torch_dist.get_backend() == "gloo":
        return tensor.float()
    return tensor


def gather_batches(tensor: Tensor, world_size: int) -> Tensor:
    """``[B, ...]`` on every rank → ``[W·B, ...]``: the ranks' batches in rank order (B equal on all)."""
    if not _distributed(world_size):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    torch_dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def merge_sharded_topk(scores: Tensor, indices: Tensor, k: int, world_size: int) -> tuple[Tensor, Tensor]:
    """Exact global top-k of this rank's queries from every rank's shard-local top-k.

    Args:
        scores, indices: ``[W·B, k]`` this rank's top-k over ITS rows for the queries of all ranks (rank
            order, B queries each), indices already global (−1 = padding, score −inf), sorted or not.
        k: results per query.

    Returns:
        ``(scores [B, k], indices [B, k])`` for this rank's B queries, sorted by score descending then index
        ascending: the top-k a single unsharded bank gives, ties included (each shard's list holds every
        global winner it owns, and the tie order by global index is the same everywhere).
    """
    if _distributed(world_size):
        received_scores, received_ids = torch.empty_like(scores), torch.empty_like(indices)
        torch_dist.all_to_all_single(received_scores, scores.contiguous())
        torch_dist.all_to_all_single(received_ids, indices.contiguous())
        batch = scores.shape[0] // world_size
        # [W·B, k] blocks by source rank → [B, W·k] candidates per query
        scores = received_scores.view(world_size, batch, -1).permute(1, 0, 2).reshape(batch, -1)
        indices = received_ids.view(world_size, batch, -1).permute(1, 0, 2).reshape(batch, -1)
    merged_scores, merged_ids = sort_by_score_then_index(scores, indices)
    return merged_scores[:, :k].contiguous(), merged_ids[:, :k].contiguous()


def fetch_rows(bank: Tensor, indices: Tensor, shards: RowShards) -> Tensor:
    """Rows of a row-sharded bank by global index: ``[R]`` indices (−1 = padding) → ``[R, D]`` (bank dtype;
    zero rows for padding). ``bank`` is this rank's shard ``[shards.size, D]``. A collective when sharded:
    requests go to the owners and the rows come back (``R·D`` elements each way per rank)."""
    valid = indices >= 0
    out = torch.zeros(indices.shape[0], bank.shape[1], dtype=bank.dtype, device=bank.device)
    if not _distributed(shards.world_size):
        out[valid] = bank[indices[valid] - shards.start]
        return out
    wanted = indices[valid]
    owners = shards.owner(wanted)
    order = torch.argsort(owners, stable=True)
    send_ids = wanted[order]
    send_counts = torch.bincount(owners, minlength=shards.world_size)
    recv_counts = torch.empty_like(send_counts)
    torch_dist.all_to_all_single(recv_counts, send_counts)
    send_split, recv_split = send_counts.tolist(), recv_counts.tolist()
    asked = torch.empty(sum(recv_split), dtype=torch.int64, device=bank.device)
    torch_dist.all_to_all_single(asked, send_ids, recv_split, send_split)
    answer = _wire_dtype(bank[asked - shards.start])
    rows = torch.empty(len(send_ids), bank.shape[1], dtype=answer.dtype, device=bank.device)
    torch_dist.all_to_all_single(rows, answer, send_split, recv_split)
    gathered = torch.empty_like(rows)
    gathered[order] = rows
    out[valid] = gathered.to(bank.dtype)
    return out
