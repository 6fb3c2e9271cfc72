"""Which pre-training identities walk through which video."""

from __future__ import annotations

import numpy as np

from .config import SynthScale


def assign_identities(scale: SynthScale, rng: np.random.Generator) -> list[list[int]]:
    """Identities per video (indexed by order = video index · cameras + camera).

    Each identity gets a random "home" time and its ~slots/P appearances go to the free videos nearest in
    order, each in a camera it has not yet visited when possible: the same person reappears in nearby videos
    of other cameras, the structure CION's cross-video sliding window exploits.
    """
    videos, cameras = scale.num_videos, scale.num_cameras
    order = np.arange(videos)
    video_camera = order % cameras
    free = np.full(videos, scale.people_per_video)
    members: list[list[int]] = [[] for _ in range(videos)]
    identities = scale.num_pretrain_identities
    appearances = np.full(identities, scale.appearance_slots // identities)
    appearances[rng.permutation(identities)[: scale.appearance_slots % identities]] += 1
    for identity in rng.permutation(identities):
        home = rng.uniform(0, videos)
        visited = np.zeros(cameras, bool)
        holds = np.zeros(videos, bool)
        for _ in range(appearances[identity]):
            cost = np.abs(order - home) + 1e3 * visited[video_camera] + rng.random(videos)
            cost[(free == 0) | holds] = np.inf
            choice = int(np.argmin(cost))
            if not np.isfinite(cost[choice]):
                choice = _make_room(members, free, int(identity), video_camera, rng)
            members[choice].append(int(identity))
            free[choice] -= 1
            holds[choice] = True
            visited[video_camera[choice]] = True
            if visited.all():
                visited[:] = False
    return [sorted(group) for group in members]


def _make_room(
    members: list[list[int]],
    free: np.ndarray,
    identity: int,
    video_camera: np.ndarray,
    rng: np.random.Generator,
) -> int:
    """When every video with a free place already holds ``identity``: move another person ``other`` from a
    video ``target`` without ``identity`` into a free video (one whose camera ``other`` has not visited, if
    any), so that ``target`` has room for ``identity``. Returns ``target``."""
    free_videos = [int(v) for v in np.nonzero(free > 0)[0]]
    for strict in (True, False):
        for target in rng.permutation(len(members)):
            if identity in members[target]:
                continue
            for other in members[target]:
                visited = {
                    int(video_camera[v]) for v, group in enumerate(members) if other in group and v != target
                }
                for free_video in free_videos:
                    if other in members[free_video] or (strict and video_camera[free_video] in visited):
                        continue
                    members[target].remove(other)
                    members[free_video].append(other)
                    free[free_video] -= 1
                    free[target] += 1
                    return int(target)
    raise RuntimeError(f"cannot place identity {identity}: every video already holds it")
