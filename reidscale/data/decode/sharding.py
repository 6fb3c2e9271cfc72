"""Which records a rank decodes in an epoch: a partition of the data, reshuffled per epoch from the seed.

Every rank computes the same permutation from ``(seed, epoch)`` alone (no communication), so the shards of
all ranks are disjoint, together cover every record, and change from one epoch to the next.

by="video" (default): whole videos go to one rank, so each rank opens a file once and decodes its frames
    in order. Videos are visited in the epoch's shuffled order and each goes to the rank with the fewest
    records so far (ties: lowest rank), which keeps the shards within one video's size of each other.
    Inside a shard, records are grouped by video (shuffled video order), by frame inside a video.
by="record": a plain shuffled split ``permutation[rank::world_size]`` (shard sizes differ by at most one);
    records of one video spread over ranks, so every rank decodes from most files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reidscale.data.records import CropRecord
from reidscale.utils.dist import get_rank, get_world_size

SHARD_BY: tuple[str, ...] = ("video", "record")


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator every rank builds for ``(seed, epoch)``; independent streams for different epochs."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return np.random.default_rng([seed, epoch])


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")


def assign_videos(video_sizes: Sequence[int], world_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Per rank, the video positions it owns in visiting order (greedy least-loaded in shuffled order)."""
    _check_rank(0, world_size)
    order = epoch_rng(seed, epoch).permutation(len(video_sizes))
    loads = [0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for video in order:
        rank = min(range(world_size), key=lambda candidate: (loads[candidate], candidate))
        owned[rank].append(int(video))
        loads[rank] += int(video_sizes[video])
    return owned


def shard_records(
    records: Sequence[CropRecord],
    seed: int,
    epoch: int,
    rank: int | None = None,
    world_size: int | None = None,
    by: str = "video",
) -> list[int]:
    """Positions in ``records`` that ``rank`` handles in ``epoch`` (rank/world default to the launcher's).

    Deterministic in (records, seed, epoch, rank, world_size, by); see the module docstring for the order.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    _check_rank(rank, world_size)
    if by not in SHARD_BY:
        raise ValueError(f"by must be one of {SHARD_BY}, got {by!r}")
    if by == "record":
        return [
            int(position) for position in epoch_rng(seed, epoch).permutation(len(records))[rank::world_size]
        ]
    positions_by_video: dict[str, list[int]] = {}
    for position, record in enumerate(records):
        positions_by_video.setdefault(record.source, []).append(position)
    videos = list(positions_by_video.values())
    owned = assign_videos([len(positions) for positions in videos], world_size, seed, epoch)[rank]
    shard = []
    for video in owned:
        shard.extend(sorted(videos[video], key=lambda position: (records[position].frame, position)))
    return shard
