"""CION, stage 2 (docs/methods.md#stage-2-identity-guided-self-distillation) as a pre-training method:
identity batches (N identities × K images, K on the schedule) of CION's multi-crop views streamed from the
indexed image set of ``pretrain_data`` (a shard set, or a manifest through the crop cache; the identities
are its ``pid``: tracklets, or the ids of a CION-AL style list), the ``cion`` section and the objective of
``reidscale.objectives.cion``; it hands the teacher's backbone to fine-tuning and keeps nothing else."""

from __future__ import annotations

import math
from functools import reduce
from pathlib import Path
from typing import Any

import torch

from reidscale.config.compose import Section
from reidscale.data.pretrain_set import build_pretrain_set
from reidscale.data.sampler import IdentitySampler, KSchedule
from reidscale.data.views.spec import cion_multicrop
from reidscale.engine.gather import gathered_state_dict
from reidscale.methods.pretraining import pretrain_micro_batch, pretraining_method, view_stream
from reidscale.methods.spec import StateDict, TrainingData
from reidscale.objectives.cion import CionConfig, CionDistillation


def k_schedule(config: Any) -> KSchedule:
    """``cion.k_schedule`` in epochs of this run (``train.epochs``; 100 when the run counts steps instead)."""
    return KSchedule(config.cion.k_milestones(config.train.epochs or 100))


def released_blur_sigma(size: tuple[int, int]) -> tuple[float, float]:
    """The released blur sigma range, 0.1-2 pixels of 256×128 global (128×64 local) views, scaled by the
    input height / 256, so that a smaller input (the CPU demo's 64×32) is blurred by the same fraction of
    the person and not four times as much."""
    scale = size[0] / 256
    return (0.1 * scale, 2.0 * scale)


def cion_views(config: Any, rank: int, world_size: int) -> TrainingData:
    """This rank's stream of identity batches of CION's views (2 global views at ``model.img_size``, then
    ``cion.num_local`` local ones at half of it): torch workers on the CPU, DALI for a shard set on a GPU.
    Facts: ``skipped`` / ``skipped_entries`` as for every pre-training set.

    Raises:
        ValueError: the per-rank batch is not a multiple of every K of the schedule.
    """
    batch = pretrain_micro_batch(config, world_size)
    schedule = k_schedule(config)
    multiple = reduce(math.lcm, schedule.ks)
    if batch % multiple:
        raise ValueError(
            f"pretrain.batch_size / ranks = {batch} must be a multiple of {multiple}, so that every K of "
            f"cion.k_schedule {list(schedule.ks)} cuts it into whole identities"
        )
    size = tuple(config.model.input_size)
    data = config.pretrain_data
    dataset, _ = build_pretrain_set(
        data,
        size,
        batch,
        config.run.seed,
        rank,
        world_size,
        cache_root=Path(config.run.output_dir) / "crop_caches",
    )
    sampler = IdentitySampler(
        dataset.pids, batch, schedule, rank=rank, world_size=world_size, seed=config.run.seed
    )
    cion = config.cion
    spec = cion_multicrop(
        cion.num_local,
        global_size=size,
        local_size=(size[0] // 2, size[1] // 2),
        color_jitter_p=cion.color_jitter_p,
        hue=cion.hue,
        grayscale_p=cion.grayscale_p,
        blur_sigma=released_blur_sigma(size),
    )
    stream = view_stream(config, dataset, sampler, spec)
    return TrainingData(
        dataset=dataset,
        batch_sampler=sampler,
        num_workers=data.num_workers,
        summary=dataset.summary + f"; identity batches of {batch} per rank, K {list(schedule.ks)}",
        loader=stream,
        facts={"skipped": dataset.skipped, "skipped_entries": dataset.skipped_entries},
    )


def build_objective(config: Any, backbone: Any, data: TrainingData) -> CionDistillation:
    """Student and EMA teacher over ``backbone``; SyncBatchNorm when several ranks train on GPUs."""
    sync = config.cion.sync_batchnorm and torch.cuda.is_available() and torch.distributed.is_initialized()
    sync = sync and torch.distributed.get_world_size() > 1
    return CionDistillation(backbone, config.cion, k_schedule(config).k_at, sync_batchnorm=sync)


def transfer(objective: CionDistillation) -> tuple[StateDict, StateDict | None]:
    """(the teacher's backbone weights, nothing else)."""
    return gathered_state_dict(objective.teacher.backbone), None


CION = pretraining_method(
    name="cion",
    description="CION stage 2: identity-guided self-distillation of multi-crop views (student, EMA teacher)",
    section=Section(
        "cion", CionConfig, "CION identity-guided self-distillation: head, temperatures, views, K"
    ),
    build_data=cion_views,
    build_objective=build_objective,
    transfer=transfer,
)
