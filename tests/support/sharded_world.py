"""A small row-sharded bank run on 1 or 2 gloo ranks, for the tests of ``reidscale.sharded``.

Every rank owns its block of a 7-row bank and asks for rows (its own and the other rank's, with −1
padding), gathers a batch, and merges shard-local top-k lists with many exact score ties. The test compares
the 2-rank results with brute-force truth computed on the whole bank.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from reidscale.sharded import RowShards, fetch_rows, gather_batches, merge_sharded_topk
from tests.support.gloo_ranks import run_on_two_ranks

ROWS, DIM, QUERIES, K = 7, 3, 2, 4  # 7 rows sharded 3 | 4; 2 queries per rank; k = 4 > the 3 rows of rank 0
REQUESTS = [torch.tensor([5, -1, 0, 6, 2, 2]), torch.tensor([1, 4, -1, -1])]  # per rank, any owner


def whole_bank() -> Tensor:
    """float32 [ROWS, DIM] with exact, distinct values (bf16-exact too: multiples of 1/2 below 32)."""
    return torch.arange(ROWS * DIM, dtype=torch.float32).view(ROWS, DIM) / 2


def batch_of(rank: int) -> Tensor:
    """[QUERIES, DIM] batch that rank ``rank`` contributes to ``gather_batches``."""
    return torch.full((QUERIES, DIM), float(rank)) + torch.arange(QUERIES, dtype=torch.float32)[:, None]


def all_scores() -> Tensor:
    """[W·QUERIES, ROWS] scores of every rank's queries (rank order, W = 2) against every row; values from
    {0, 1, 2} so exact ties are common."""
    return torch.randint(0, 3, (2 * QUERIES, ROWS), generator=torch.Generator().manual_seed(11)).float()


def local_topk(scores: Tensor, start: int, stop: int, k: int) -> tuple[Tensor, Tensor]:
    """Each query's top-k over rows [start, stop), by (score desc, row asc), padded with (−inf, −1)."""
    out_scores = torch.full((scores.shape[0], k), float("-inf"))
    out_ids = torch.full((scores.shape[0], k), -1, dtype=torch.int64)
    for query in range(scores.shape[0]):
        rows = sorted(range(start, stop), key=lambda j: (-float(scores[query, j]), j))[:k]
        out_ids[query, : len(rows)] = torch.tensor(rows, dtype=torch.int64)
        out_scores[query, : len(rows)] = scores[query, rows]
    return out_scores, out_ids


def scenario(rank: int, world_size: int) -> dict[str, Tensor]:
    """What rank ``rank`` of ``world_size`` gets from each collective (see the module docstring)."""
    shards = RowShards(ROWS, world_size, rank)
    bank = whole_bank()[shards.start : shards.stop]
    requests = torch.cat(REQUESTS) if world_size == 1 else REQUESTS[rank]
    batch = torch.cat([batch_of(r) for r in range(2)]) if world_size == 1 else batch_of(rank)
    scores = all_scores()
    local_scores, local_ids = local_topk(scores, shards.start, shards.stop, K)
    merged = merge_sharded_topk(local_scores, local_ids, K, world_size)  # one rank: all queries are its own
    return {
        "rows": fetch_rows(bank, requests, shards),
        "rows_bf16": fetch_rows(bank.to(torch.bfloat16), requests, shards),
        "gathered": gather_batches(batch, world_size),
        "merged_scores": merged[0],
        "merged_ids": merged[1],
    }


def spawn_two_ranks(out: Path) -> list[dict[str, Tensor]]:
    """Run :func:`scenario` on 2 gloo ranks (spawned processes); returns their results, rank order."""
    return run_on_two_ranks(scenario, out)
