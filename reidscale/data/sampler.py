"""Distributed identity sampler: batches of N identities × K consecutive images (CION, docs/methods.md#cion).

An epoch is planned in three steps, all drawn from ``numpy.random.default_rng([seed, epoch])`` so that
every rank computes the same plan without communicating:

1. **Runs.** Each identity's indices, in dataset order (``order_within_identity="consecutive"``: e.g. the
   frames of a tracklet in order) or shuffled (``"random"``), are cut into ``floor(n / K)`` disjoint runs of K
   adjacent images, starting at a random offset in ``0 .. n mod K`` (no wrap-around, so a run never jumps
   from the last image back to the first). Each image is used at most once per epoch; the ``n mod K``
   leftover images change from epoch to epoch. An identity with ``n < K`` images gives one run: all of its
   ``n`` images plus ``K - n`` more drawn with replacement, sorted, so the block is non-decreasing and
   covers every image of that identity.
2. **Batches.** The epoch is one pass over the runs (≈ total images / K, CION's "one pass over the
   images"): ``B = R // N`` batches of N runs (``drop_last=False``: ``ceil(R / N)``). No identity may appear
   twice in a batch, so an identity keeps at most ``B`` runs; capping and recomputing ``B`` repeats until
   stable, which gives the largest number of full batches possible. Surplus runs are dropped at random
   (``drop_last=False``: missing slots are filled with extra runs of identities that have room). The runs
   are then laid out identity by identity in a random identity order and position ``p`` goes to batch
   ``p mod B``: an identity's runs are adjacent in the layout and number at most ``B``, so they land in
   distinct batches. The batch order is shuffled, which spreads each identity's runs over the epoch.
   (Identities next to each other in the layout share several batches of an epoch; the layout is redrawn
   every epoch. CION's loss has no in-batch negatives, so this costs it nothing.)
   When ``N`` exceeds the number of identities, repeats inside a batch are unavoidable and allowed.
3. **Ranks.** Rank ``r`` of ``W`` takes global batches ``r, r + W, …``; the ``B mod W`` last batches are
   dropped (``drop_last=False``: the list is padded by cycling from its start), so all ranks have the same
   number of batches.

Resuming: ``state_dict()`` holds the epoch and the number of batches this rank has yielded in it; it is
identical on every rank, so rank 0's copy restores all of them. A DataLoader prefetches batches ahead of
training; a trainer that wants the exact resume point stores its own count of consumed batches as
``state["position"]``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from reidscale.utils.dist import get_rank, get_world_size

if TYPE_CHECKING:
    from torch import Tensor

WITHIN_IDENTITY_ORDERS: tuple[str, ...] = ("consecutive", "random")
CION_K_MILESTONES: tuple[tuple[int, int], ...] = ((0, 2), (40, 4), (60, 6), (80, 8))


@dataclass(frozen=True)
class KSchedule:
    """K (images per identity in a batch) as a step function of the epoch.

    milestones: ``((first_epoch, K), …)`` with first epochs strictly increasing from 0 and K >= 1.
    """

    milestones: tuple[tuple[int, int], ...] = CION_K_MILESTONES

    def __post_init__(self) -> None:
        milestones = tuple((int(epoch), int(k)) for epoch, k in self.milestones)
        if not milestones:
            raise ValueError("KSchedule.milestones is empty: expected ((0, K), (epoch, K), ...)")
        if milestones[0][0] != 0:
            raise ValueError(
                f"KSchedule.milestones must start at epoch 0, got first epoch {milestones[0][0]}"
            )
        for (prev_epoch, _), (epoch, _) in itertools.pairwise(milestones):
            if epoch <= prev_epoch:
                raise ValueError(
                    f"KSchedule.milestones epochs must be strictly increasing, got {prev_epoch} then {epoch}"
                )
        for epoch, k in milestones:
            if k < 1:
                raise ValueError(f"KSchedule.milestones: K must be >= 1, got K={k} at epoch {epoch}")
        object.__setattr__(self, "milestones", milestones)

    @property
    def ks(self) -> tuple[int, ...]:
        return tuple(k for _, k in self.milestones)

    def k_at(self, epoch: int) -> int:
        """K in force at ``epoch`` (the last milestone whose first epoch is <= epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        k_now = self.milestones[0][1]
        for first_epoch, k in self.milestones:
            if epoch >= first_epoch:
                k_now = k
        return k_now


def _as_pid_array(pids: Sequence[int] | np.ndarray | Tensor) -> np.ndarray:
    """Identity labels as a 1-D int64 array, validated.  pids: (num_indices,)"""
    if hasattr(pids, "detach"):
        pids = pids.detach().cpu().numpy()
    array = np.asarray(pids)
    if array.ndim != 1:
        raise ValueError(f"pids must be 1-D (one identity per dataset index), got shape {array.shape}")
    if array.size == 0:
        raise ValueError("pids is empty: the sampler needs at least one dataset index")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"pids must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    negative = np.flatnonzero(array < 0)
    if negative.size:
        raise ValueError(
            f"pids[{negative[0]}] = {array[negative[0]]}: identity labels must be >= 0 "
            "(drop junk/unlabelled records before sampling)"
        )
    return array


def _cut_runs(
    members: np.ndarray, starts: np.ndarray, counts: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Runs of K images per identity (see step 1 of the module docstring).

    members: (num_indices,) dataset indices grouped by identity; identity i owns
    ``members[starts[i] : starts[i] + counts[i]]``.
    Returns (runs (R, K) dataset indices, run_identity (R,) identity number of each run), sorted by identity.
    """
    num_full = counts // k
    offsets = np.floor(rng.random(counts.size) * (counts % k + 1)).astype(np.int64)
    full_owner = np.repeat(np.arange(counts.size), num_full)
    run_in_owner = np.arange(full_owner.size) - np.repeat(np.cumsum(num_full) - num_full, num_full)
    full_first = starts[full_owner] + offsets[full_owner] + run_in_owner * k
    full_runs = members[full_first[:, None] + np.arange(k)[None, :]]

    small_owner = np.flatnonzero(counts < k)
    small_counts = counts[small_owner][:, None]
    columns = np.arange(k)[None, :]
    drawn = np.floor(rng.random((small_owner.size, k)) * small_counts).astype(np.int64)
    positions = np.sort(np.where(columns < small_counts, columns, drawn), axis=1)
    small_runs = members[starts[small_owner][:, None] + positions]
    runs = np.concatenate([full_runs, small_runs])
    run_identity = np.concatenate([full_owner, small_owner])
    by_identity = np.argsort(run_identity, kind="stable")
    return runs[by_identity], run_identity[by_identity]


def _count_batches(run_counts: np.ndarray, n_per_batch: int, drop_last: bool) -> int:
    """Most batches of N distinct identities, identity i having run_counts[i] runs (drop_last=False: ceil)."""
    total = int(run_counts.sum())
    num_batches = total // n_per_batch if drop_last else -(-total // n_per_batch)
    while num_batches > 0:
        capped = int(np.minimum(run_counts, num_batches).sum())
        again = capped // n_per_batch if drop_last else -(-capped // n_per_batch)
        if again == num_batches:
            break
        num_batches = again
    return num_batches


def _pack_distinct(
    run_identity: np.ndarray, n_per_batch: int, drop_last: bool, rng: np.random.Generator
) -> np.ndarray:
    """Batches of N runs of distinct identities (step 2).  Returns (B, N) run numbers."""
    num_identities = int(run_identity.max()) + 1
    run_counts = np.bincount(run_identity, minlength=num_identities)
    num_batches = _count_batches(run_counts, n_per_batch, drop_last)
    if num_batches == 0:
        return np.empty((0, n_per_batch), dtype=np.int64)
    by_identity_random = np.lexsort((rng.random(run_identity.size), run_identity))
    group_start = np.repeat(np.cumsum(run_counts) - run_counts, run_counts)
    rank_in_identity = np.empty(run_identity.size, dtype=np.int64)
    rank_in_identity[by_identity_random] = np.arange(run_identity.size) - group_start
    kept = np.flatnonzero(rank_in_identity < num_batches)
    slots = num_batches * n_per_batch
    if kept.size > slots:
        kept = np.sort(rng.choice(kept, size=slots, replace=False))
    elif kept.size < slots:
        room = num_batches - np.minimum(run_counts, num_batches)
        free_slot = rng.choice(int(room.sum()), size=slots - kept.size, replace=False)
        extra_owner = np.searchsorted(np.cumsum(room), free_slot, side="right")
        owner_first = np.cumsum(run_counts) - run_counts
        extra = owner_first[extra_owner] + np.floor(rng.random(extra_owner.size) * run_counts[extra_owner])
        kept = np.concatenate([kept, extra.astype(np.int64)])
    identity_rank = rng.permutation(num_identities)
    layout = kept[np.lexsort((kept, identity_rank[run_identity[kept]]))]
    batches = np.empty((num_batches, n_per_batch), dtype=np.int64)
    positions = np.arange(slots)
    batches[positions % num_batches, positions // num_batches] = layout
    return batches[rng.permutation(num_batches)]


def _pack_with_repeats(
    num_runs: int, n_per_batch: int, drop_last: bool, rng: np.random.Generator
) -> np.ndarray:
    """Batches when N exceeds the number of identities: shuffled runs, cut into rows.  Returns (B, N)."""
    num_batches = num_runs // n_per_batch if drop_last else -(-num_runs // n_per_batch)
    order = rng.permutation(num_runs)
    missing = num_batches * n_per_batch - num_runs
    if missing > 0:
        order = np.concatenate([order, rng.integers(0, num_runs, size=missing)])
    return order[: num_batches * n_per_batch].reshape(num_batches, n_per_batch)


class IdentitySampler:
    """Batch sampler: per-rank lists of ``batch_size = N × K`` dataset indices, K consecutive per identity.

    Use as ``DataLoader(dataset, batch_sampler=sampler)`` and call ``set_epoch(epoch)`` before each epoch.
    See the module docstring for the epoch plan; ``pids[i]`` is the identity of dataset index ``i``.
    """

    def __init__(
        self,
        pids: Sequence[int] | np.ndarray | Tensor,
        batch_size: int,
        k_schedule: KSchedule | int,
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
        drop_last: bool = True,
        order_within_identity: Literal["consecutive", "random"] = "consecutive",
    ) -> None:
        self.pids = _as_pid_array(pids)
        self.k_schedule = (
            k_schedule if isinstance(k_schedule, KSchedule) else KSchedule(((0, int(k_schedule)),))
        )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for k in self.k_schedule.ks:
            if batch_size % k:
                raise ValueError(
                    f"batch_size={batch_size} is not divisible by K={k} of the K schedule "
                    f"{self.k_schedule.milestones}: a batch is N identities × K images"
                )
        self.world_size = get_world_size() if world_size is None else int(world_size)
        self.rank = get_rank() if rank is None else int(rank)
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if order_within_identity not in WITHIN_IDENTITY_ORDERS:
            raise ValueError(
                f"order_within_identity must be one of {WITHIN_IDENTITY_ORDERS}, "
                f"got {order_within_identity!r}"
            )
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.order_within_identity = order_within_identity
        self._members = np.argsort(self.pids, kind="stable")
        _, self._starts, self._counts = np.unique(
            self.pids[self._members], return_index=True, return_counts=True
        )
        self._identity_of_member = np.repeat(np.arange(self._counts.size), self._counts)
        self._pids_digest = hashlib.sha1(self.pids.tobytes()).hexdigest()[:16]
        self._epoch = 0
        self._position = 0
        self._resume_pending = False
        self._plan_epoch: int | None = None
        self._plan = np.empty((0, self.batch_size), dtype=np.int64)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def num_identities(self) -> int:
        return int(self._counts.size)

    def k_now(self) -> int:
        """K of the current epoch."""
        return self.k_schedule.k_at(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to plan; a new epoch starts at position 0, the same epoch keeps its position."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self._epoch:
            self._epoch = int(epoch)
            self._position = 0
            self._resume_pending = False

    def global_batches(self, epoch: int) -> np.ndarray:
        """All ranks' batches of ``epoch`` before the rank split.  Returns (B, batch_size) dataset indices."""
        k = self.k_schedule.k_at(epoch)
        n_per_batch = self.batch_size // k
        rng = np.random.default_rng([self.seed, epoch])
        members = self._members
        if self.order_within_identity == "random":
            members = members[np.lexsort((rng.random(members.size), self._identity_of_member))]
        runs, run_identity = _cut_runs(members, self._starts, self._counts, k, rng)
        if n_per_batch <= self.num_identities:
            batch_runs = _pack_distinct(run_identity, n_per_batch, self.drop_last, rng)
        else:
            batch_runs = _pack_with_repeats(len(runs), n_per_batch, self.drop_last, rng)
        return runs[batch_runs].reshape(len(batch_runs), self.batch_size)

    def rank_batches(self, epoch: int) -> np.ndarray:
        """This rank's batches of ``epoch``: global batches rank, rank + W, ….  Returns (L, batch_size)."""
        if self._plan_epoch != epoch:
            everyone = self.global_batches(epoch)
            if self.drop_last or len(everyone) == 0:
                per_rank = len(everyone) // self.world_size
            else:
                per_rank = math.ceil(len(everyone) / self.world_size)
            picked = (self.rank + self.world_size * np.arange(per_rank)) % max(len(everyone), 1)
            self._plan = everyone[picked]
            self._plan_epoch = epoch
        return self._plan

    def __len__(self) -> int:
        return len(self.rank_batches(self._epoch))

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.rank_batches(self._epoch)
        start = self._position if self._resume_pending else 0
        self._resume_pending = False
        for position in range(start, len(plan)):
            self._position = position + 1
            yield plan[position].tolist()

    def state_dict(self) -> dict[str, Any]:
        """Everything that fixes the batch sequence, plus the position (batches yielded this epoch)."""
        return {
            "epoch": self._epoch,
            "position": self._position,
            "seed": self.seed,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "k_milestones": [list(milestone) for milestone in self.k_schedule.milestones],
            "drop_last": self.drop_last,
            "order_within_identity": self.order_within_identity,
            "num_indices": int(self.pids.size),
            "pids_digest": self._pids_digest,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Adopt ``state``'s seed, epoch and position; the next ``__iter__`` continues the same sequence.

        Settings that change the sequence (world size, batch size, K schedule, dataset, ...) must match.
        """
        mine = self.state_dict()
        missing = sorted(set(mine) - set(state))
        if missing:
            raise ValueError(f"IdentitySampler state is missing {missing}")
        for key in ("world_size", "batch_size", "k_milestones", "drop_last", "order_within_identity"):
            if json.loads(json.dumps(state[key])) != mine[key]:
                raise ValueError(
                    f"IdentitySampler state has {key}={state[key]!r}, this sampler has {mine[key]!r}"
                )
        if (state["num_indices"], state["pids_digest"]) != (mine["num_indices"], mine["pids_digest"]):
            raise ValueError(
                f"IdentitySampler state was saved for another dataset ({state['num_indices']} indices, "
                f"pids digest {state['pids_digest']}); this one has {mine['num_indices']} indices, "
                f"digest {mine['pids_digest']}"
            )
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._plan_epoch = None
        plan_length = len(self.rank_batches(self._epoch))
        position = int(state["position"])
        if not 0 <= position <= plan_length:
            raise ValueError(f"IdentitySampler state position={position} is outside 0..{plan_length}")
        self._position = position
        self._resume_pending = True
