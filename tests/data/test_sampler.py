"""Identity sampler: block structure, schedule, ranks, coverage and resume, against hand-worked cases."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest
import torch

from reidscale.data.sampler import IdentitySampler, KSchedule


def interleaved_pids(sizes: list[int], seed: int = 0) -> np.ndarray:
    """Identity i gets sizes[i] dataset indices, scattered (dataset order differs from identity order)."""
    pids = np.repeat(np.arange(len(sizes)), sizes)
    return pids[np.random.default_rng(seed).permutation(pids.size)]


def members_by_identity(pids: np.ndarray) -> dict[int, list[int]]:
    return {int(pid): np.flatnonzero(pids == pid).tolist() for pid in np.unique(pids)}


def check_batch(
    batch: list[int], pids: np.ndarray, k: int, batch_size: int, consecutive: bool = True
) -> None:
    """Every K-block is one identity: K adjacent entries of its ordered list, or its with-replacement rule."""
    assert len(batch) == batch_size
    members = members_by_identity(pids)
    block_pids = []
    for block in np.asarray(batch).reshape(batch_size // k, k).tolist():
        owners = {int(pids[index]) for index in block}
        assert len(owners) == 1, f"block {block} mixes identities {owners}"
        pid = owners.pop()
        block_pids.append(pid)
        own = members[pid]
        if len(own) < k:
            assert block == sorted(block) and set(block) == set(own)
        elif consecutive:
            first = own.index(block[0])
            assert block == own[first : first + k]
        else:
            assert len(set(block)) == k
    assert len(block_pids) == len(set(block_pids)), f"identity repeated in batch {batch}"


def test_k_schedule_steps_at_cion_milestones() -> None:
    schedule = KSchedule()
    expected = {0: 2, 39: 2, 40: 4, 59: 4, 60: 6, 79: 6, 80: 8, 99: 8, 500: 8}
    assert {epoch: schedule.k_at(epoch) for epoch in expected} == expected
    assert KSchedule(((0, 3),)).k_at(7) == 3


@pytest.mark.parametrize(
    ("milestones", "message"),
    [
        ((), "empty"),
        (((1, 2),), "start at epoch 0"),
        (((0, 2), (5, 4), (5, 6)), "strictly increasing, got 5 then 5"),
        (((0, 2), (3, 0)), "K must be >= 1, got K=0 at epoch 3"),
    ],
)
def test_bad_schedule_is_named(milestones: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KSchedule(milestones)


def test_batches_are_n_identities_of_k_consecutive_images() -> None:
    pids = interleaved_pids([9, 4, 1, 7, 3, 12, 5, 2, 6, 8])
    sampler = IdentitySampler(pids, batch_size=12, k_schedule=3, rank=0, world_size=1, seed=5)
    for epoch in range(6):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) > 0
        for batch in batches:
            check_batch(batch, pids, k=3, batch_size=12)


def test_random_order_blocks_are_distinct_images_of_one_identity() -> None:
    pids = interleaved_pids([9, 4, 1, 7, 3, 12])
    sampler = IdentitySampler(pids, 6, 3, rank=0, world_size=1, order_within_identity="random")
    batches = list(sampler)
    for batch in batches:
        check_batch(batch, pids, k=3, batch_size=6, consecutive=False)
    used = [index for batch in batches for index in batch if Counter(pids.tolist())[pids[index]] >= 3]
    assert len(used) == len(set(used))


def test_k_follows_the_schedule_across_epochs() -> None:
    pids = interleaved_pids([8, 5, 9, 4, 7, 6, 10, 3])
    schedule = KSchedule(((0, 2), (2, 4), (3, 1)))
    sampler = IdentitySampler(pids, 8, schedule, rank=0, world_size=1)
    for epoch, k in [(0, 2), (1, 2), (2, 4), (3, 1), (9, 1)]:
        sampler.set_epoch(epoch)
        assert sampler.k_now() == k
        for batch in sampler:
            check_batch(batch, pids, k=k, batch_size=8)


def test_deterministic_for_seed_and_epoch_and_different_otherwise() -> None:
    pids = interleaved_pids([6, 5, 7, 4, 8, 3, 5, 6])

    def run(seed: int, epoch: int) -> list[list[int]]:
        sampler = IdentitySampler(pids, 8, 2, rank=0, world_size=1, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert run(3, 2) == run(3, 2)
    assert run(3, 2) != run(3, 1)
    assert run(3, 2) != run(4, 2)


def test_ranks_partition_the_global_sequence() -> None:
    pids = interleaved_pids([7, 6, 8, 5, 9, 4, 6, 7, 8, 5])
    everyone = IdentitySampler(pids, 4, 2, rank=0, world_size=1, seed=1)
    for epoch in (0, 1):
        everyone.set_epoch(epoch)
        global_batches = [batch.tolist() for batch in everyone.global_batches(epoch)]
        per_rank = len(global_batches) // 3
        rank_lists = []
        for rank in range(3):
            sampler = IdentitySampler(pids, 4, 2, rank=rank, world_size=3, seed=1)
            sampler.set_epoch(epoch)
            rank_lists.append(list(sampler))
            assert rank_lists[rank] == global_batches[rank::3][:per_rank]
        assert [len(batches) for batches in rank_lists] == [per_rank] * 3
        used = [index for batches in rank_lists for batch in batches for index in batch]
        assert len(used) == len(set(used))


def test_rank_and_world_size_default_to_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    sampler = IdentitySampler(interleaved_pids([4, 4, 4]), 4, 2)
    assert (sampler.rank, sampler.world_size) == (1, 2)


SIZES = [5, 3, 4, 1, 6, 2]
# K=2, N=2: runs per identity 2+1+2+1+3+1 = 10 = 5 batches × 2, none bigger than 5, so every run is used.
# An identity of n >= K images starts its runs at an offset drawn uniformly from 0..n mod K.
EXACT_USE = {5: [0.5, 1, 1, 1, 0.5], 3: [0.5, 1, 0.5], 4: [1] * 4, 1: [2], 6: [1] * 6, 2: [1, 1]}


def test_coverage_matches_hand_worked_expectation() -> None:
    pids = interleaved_pids(SIZES, seed=3)
    members = members_by_identity(pids)
    sampler = IdentitySampler(pids, 4, 2, rank=0, world_size=1, seed=11)
    epochs = 400
    total_use = np.zeros(pids.size, dtype=np.int64)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        uses = Counter(index for batch in sampler for index in batch)
        assert sum(uses.values()) == 20
        size5 = members[SIZES.index(5)]
        assert uses[size5[0]] + uses[size5[4]] == 1
        total_use += np.array([uses[index] for index in range(pids.size)])
    mean_use = total_use / epochs
    for identity, size in enumerate(SIZES):
        expected = np.array(EXACT_USE[size])
        observed = mean_use[members[identity]]
        assert np.all(observed[expected != 0.5] == expected[expected != 0.5])
        # Bernoulli(1/2) over 400 epochs: sd 0.025, allow 4 sd.
        assert np.all(np.abs(observed[expected == 0.5] - 0.5) < 0.1), observed
    assert mean_use.astype(bool).sum() == pids.size


def test_random_order_coverage_is_full_runs_over_size() -> None:
    pids = interleaved_pids(SIZES, seed=3)
    members = members_by_identity(pids)
    sampler = IdentitySampler(pids, 4, 2, rank=0, world_size=1, seed=2, order_within_identity="random")
    epochs = 400
    epochs_seen = np.zeros(pids.size, dtype=np.int64)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        epochs_seen[sorted({index for batch in sampler for index in batch})] += 1
    seen = epochs_seen / epochs
    # Shuffled list, floor(n/K)·K of the n images used: each image with probability 4/5 (n=5), 2/3 (n=3).
    # sd over 400 epochs <= 0.024, allow 4 sd.
    assert np.all(np.abs(seen[members[0]] - 4 / 5) < 0.1)
    assert np.all(np.abs(seen[members[1]] - 2 / 3) < 0.1)
    assert np.all(seen[members[2] + members[3] + members[4] + members[5]] == 1)


def max_batches_brute_force(run_counts: list[int], n_per_batch: int) -> int:
    """B batches of N distinct identities exist iff sum(min(c_i, B)) >= B·N (each identity once per batch)."""
    feasible = [
        b for b in range(sum(run_counts) + 1) if sum(min(c, b) for c in run_counts) >= b * n_per_batch
    ]
    return max(feasible)


def test_dominant_identity_is_capped_hand_case() -> None:
    # runs [10, 1, 1], N=2: every batch needs identity 0 plus one of the two singles, so 2 batches at most.
    pids = interleaved_pids([20, 1, 1])
    batches = list(IdentitySampler(pids, 4, 2, rank=0, world_size=1))
    assert len(batches) == 2
    assert sorted(sorted({int(pids[index]) for index in batch}) for batch in batches) == [[0, 1], [0, 2]]


@pytest.mark.parametrize("seed", range(8))
def test_epoch_length_is_the_most_full_batches_possible(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = [int(size) for size in rng.integers(1, 12, size=int(rng.integers(3, 9)))]
    sizes[0] += int(rng.integers(0, 40))
    pids = interleaved_pids(sizes, seed)
    k, n_per_batch = 2, int(rng.integers(1, len(sizes) + 1))
    sampler = IdentitySampler(pids, n_per_batch * k, k, rank=0, world_size=1, seed=seed)
    batches = list(sampler)
    assert len(batches) == max_batches_brute_force([max(1, size // k) for size in sizes], n_per_batch)
    for batch in batches:
        check_batch(batch, pids, k=k, batch_size=n_per_batch * k)


def test_keep_last_fills_missing_slots_without_repeating_identities() -> None:
    # K=1, N=4, images per identity [5, 5, 5, 2]: 17 runs -> ceil(17/4) = 5 batches; identity 3 has room for
    # 3 more runs, so each batch holds all 4 identities. drop_last=True: only 2 batches can hold identity 3.
    pids = interleaved_pids([5, 5, 5, 2])
    kept = list(IdentitySampler(pids, 4, 1, rank=0, world_size=1, drop_last=False))
    assert len(kept) == 5
    assert all(sorted(pids[batch].tolist()) == [0, 1, 2, 3] for batch in kept)
    assert {index for batch in kept for index in batch} == set(range(pids.size))
    assert len(list(IdentitySampler(pids, 4, 1, rank=0, world_size=1, drop_last=True))) == 2


def test_keep_last_pads_ranks_by_cycling() -> None:
    pids = interleaved_pids([5, 5, 5, 2])
    global_batches = IdentitySampler(pids, 4, 1, rank=0, world_size=1, drop_last=False).global_batches(0)
    for rank, expected in enumerate([[0, 3], [1, 4], [2, 0]]):
        sampler = IdentitySampler(pids, 4, 1, rank=rank, world_size=3, drop_last=False)
        assert list(sampler) == global_batches[expected].tolist()


def test_more_identities_per_batch_than_exist_allows_repeats() -> None:
    pids = interleaved_pids([6, 6])
    batches = list(IdentitySampler(pids, 8, 2, rank=0, world_size=1))
    assert len(batches) == 1 and len(batches[0]) == 8


def test_resume_continues_the_uninterrupted_sequence() -> None:
    pids = interleaved_pids([7, 6, 8, 5, 9, 4, 6, 7, 8, 5, 3, 1])
    reference = IdentitySampler(pids, 6, KSchedule(((0, 2), (2, 3))), rank=1, world_size=2, seed=7)
    reference.set_epoch(1)
    epoch1 = list(reference)
    reference.set_epoch(2)
    epoch2 = list(reference)

    interrupted = IdentitySampler(pids, 6, KSchedule(((0, 2), (2, 3))), rank=1, world_size=2, seed=7)
    interrupted.set_epoch(1)
    assert list(itertools.islice(iter(interrupted), 3)) == epoch1[:3]
    state = json.loads(json.dumps(interrupted.state_dict()))
    assert (state["epoch"], state["position"]) == (1, 3)

    resumed = IdentitySampler(pids, 6, KSchedule(((0, 2), (2, 3))), rank=1, world_size=2, seed=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert list(resumed) == epoch1[3:]
    resumed.set_epoch(2)
    assert list(resumed) == epoch2


def test_load_state_rejects_a_different_setup() -> None:
    pids = interleaved_pids([4, 4, 4])
    state = IdentitySampler(pids, 4, 2, rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match=r"world_size=2, this sampler has 1"):
        IdentitySampler(pids, 4, 2, rank=0, world_size=1).load_state_dict(state)
    with pytest.raises(ValueError, match="another dataset"):
        IdentitySampler(interleaved_pids([4, 4, 5]), 4, 2, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        IdentitySampler(pids, 4, 2, rank=0, world_size=2).load_state_dict({"epoch": 0})


def test_tensor_pids_and_dataloader_batch_sampler() -> None:
    pids = interleaved_pids([5, 4, 6, 3])
    from_list = list(IdentitySampler(pids.tolist(), 4, 2, rank=0, world_size=1))
    sampler = IdentitySampler(torch.from_numpy(pids), 4, 2, rank=0, world_size=1)
    assert list(sampler) == from_list
    dataset = torch.utils.data.TensorDataset(torch.arange(pids.size))
    loaded = [batch[0].tolist() for batch in torch.utils.data.DataLoader(dataset, batch_sampler=sampler)]
    assert loaded == from_list


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 10}, r"batch_size=10 is not divisible by K=4"),
        ({"pids": []}, "pids is empty"),
        ({"pids": [[0, 1]]}, "must be 1-D"),
        ({"pids": [0.5, 1.0]}, "must be integers"),
        ({"pids": [0, 3, -1]}, r"pids\[2\] = -1"),
        ({"rank": 2}, r"rank must be in \[0, world_size=2\)"),
        ({"world_size": 0, "rank": 0}, "world_size must be >= 1"),
        ({"order_within_identity": "shuffled"}, "order_within_identity must be one of"),
        ({"k_schedule": 0}, "K must be >= 1"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    arguments = {
        "pids": [0, 0, 1, 1],
        "batch_size": 24,
        "k_schedule": KSchedule(),
        "rank": 0,
        "world_size": 2,
    }
    with pytest.raises(ValueError, match=message):
        IdentitySampler(**{**arguments, **kwargs})
