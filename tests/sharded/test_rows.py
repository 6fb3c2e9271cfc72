"""Row-sharded banks (reidscale/sharded/rows.py) against an independent truth: the block partition by hand
and by brute force, and the collectives on one rank and on two gloo ranks against whole-bank brute force
(tests/support/sharded_world.py)."""

from __future__ import annotations

import pytest
import torch

from reidscale.sharded import RowShards, fetch_rows, gather_batches, merge_sharded_topk
from tests.support.sharded_world import (
    QUERIES,
    REQUESTS,
    ROWS,
    K,
    all_scores,
    batch_of,
    scenario,
    spawn_two_ranks,
    whole_bank,
)

# ------------------------------------------------------------------------------------------- RowShards


@pytest.mark.parametrize(
    ("rows", "world"), [(1, 1), (1, 3), (2, 4), (5, 2), (10, 3), (13, 2), (7, 7), (100, 6)]
)
def test_row_shards_partition_rows_and_owner_agrees(rows: int, world: int) -> None:
    bounds = [RowShards(rows, world, r).bounds(r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))  # contiguous, in rank order
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 0
    assert [RowShards(rows, world, r).size for r in range(world)] == sizes
    truth = [next(r for r, (a, b) in enumerate(bounds) if a <= i < b) for i in range(rows)]
    everything = torch.arange(rows)
    assert RowShards(rows, world, 0).owner(everything).tolist() == truth
    for r in range(world):  # owned() agrees with owner(); padding is nobody's
        mask = RowShards(rows, world, r).owned(torch.cat([everything, torch.tensor([-1])]))
        assert mask.tolist() == [t == r for t in truth] + [False]


def test_row_shards_by_hand() -> None:
    shards = RowShards(10, 3, 1)
    assert [shards.bounds(r) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert (shards.start, shards.stop, shards.size) == (3, 6, 3)
    assert shards.owner(torch.tensor([0, 2, 3, 5, 6, 9])).tolist() == [0, 0, 1, 1, 2, 2]
    empty = RowShards(2, 4, 2)  # W > N: ranks 0 and 2 own nothing
    assert [empty.bounds(r) for r in range(4)] == [(0, 0), (0, 1), (1, 1), (1, 2)]
    assert empty.size == 0 and empty.owner(torch.tensor([0, 1])).tolist() == [1, 3]


BAD_SHARDS = [(0, 1, 0, "num_rows"), (5, 2, 2, "rank"), (5, 0, 0, "world_size"), (5, 2, -1, "rank")]


@pytest.mark.parametrize(("rows", "world", "rank", "word"), BAD_SHARDS)
def test_row_shards_reject_bad_arguments(rows: int, world: int, rank: int, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        RowShards(rows, world, rank)


# ------------------------------------------------------------------------------------------ collectives


def brute_rows(requests: torch.Tensor) -> torch.Tensor:
    """Rows of the whole bank by index, zero rows for −1."""
    bank = whole_bank()
    return torch.stack([bank[i] if i >= 0 else torch.zeros(bank.shape[1]) for i in requests.tolist()])


def brute_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's k best rows of the whole bank by (score desc, row asc)."""
    ids = [sorted(range(scores.shape[1]), key=lambda j: (-float(row[j]), j))[:k] for row in scores]
    ids_t = torch.tensor(ids, dtype=torch.int64)
    return scores.gather(1, ids_t), ids_t


def test_one_rank_is_local_and_exact() -> None:
    one = scenario(0, 1)
    requests = torch.cat(REQUESTS)
    assert torch.equal(one["rows"], brute_rows(requests))
    assert one["rows_bf16"].dtype == torch.bfloat16
    assert torch.equal(one["rows_bf16"].float(), brute_rows(requests))
    assert torch.equal(one["gathered"], torch.cat([batch_of(0), batch_of(1)]))
    scores, ids = brute_topk(all_scores(), K)
    assert torch.equal(one["merged_ids"], ids) and torch.equal(one["merged_scores"], scores)
    assert torch.equal(gather_batches(batch_of(1), world_size=1), batch_of(1))


def test_merge_pads_when_fewer_rows_than_k() -> None:
    scores = torch.tensor([[0.5, float("-inf"), 0.5, 0.9]])
    ids = torch.tensor([[7, -1, 2, 4]])
    merged_scores, merged_ids = merge_sharded_topk(scores, ids, 4, world_size=1)
    assert merged_ids.tolist() == [[4, 2, 7, -1]]  # the 0.5 tie: lower row first; padding last
    assert torch.equal(merged_scores, torch.tensor([[0.9, 0.5, 0.5, float("-inf")]]))
    assert fetch_rows(torch.ones(3, 2), torch.tensor([-1, 1]), RowShards(3)).tolist() == [[0, 0], [1, 1]]


@pytest.mark.multiproc
def test_two_ranks_fetch_gather_and_merge_like_the_whole_bank(tmp_path) -> None:
    """7 rows sharded 3 | 4: each rank fetches rows it owns and rows it does not (float32 and bfloat16, sent
    as float32 over gloo), gathers both batches in rank order, and merges the two shards' top-4 lists of
    its 2 queries into the whole bank's top-4, exact ties broken by the lower row."""
    ranks = spawn_two_ranks(tmp_path)
    truth_scores, truth_ids = brute_topk(all_scores(), K)
    for rank, result in enumerate(ranks):
        assert torch.equal(result["rows"], brute_rows(REQUESTS[rank]))
        assert result["rows_bf16"].dtype == torch.bfloat16
        assert torch.equal(result["rows_bf16"].float(), brute_rows(REQUESTS[rank]))
        assert torch.equal(result["gathered"], torch.cat([batch_of(0), batch_of(1)]))
        mine = slice(rank * QUERIES, (rank + 1) * QUERIES)
        assert torch.equal(result["merged_ids"], truth_ids[mine])
        assert torch.equal(result["merged_scores"], truth_scores[mine])
    assert ROWS == 7 and any(len(set(row.tolist())) < K for row in truth_scores)  # ties inside the top-k
