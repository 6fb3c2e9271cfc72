"""``reidscale finetune``: BoT-style supervised fine-tuning of a backbone on a Market-format dataset.

Runs on every rank that the launcher started (``deepspeed``, ``torchrun``, ``accelerate launch``, ``srun``,
or one plain process). The flow:

1. the train split of ``finetune.dataset`` with the BoT augmentations and this rank's PK batches
   (P = ``finetune.ids_per_batch`` identities per GLOBAL batch, P / world size per rank, K images each);
2. ``model.*`` builds the backbone (same seed on every rank; ``model.weights`` starts it from a weights
   file, e.g. a pre-training run's ``backbone.pt``), wrapped in the BNNeck objective;
3. the test split (query / gallery) is evaluated before training, every ``train.eval_every`` steps and
   at the end (mAP, R1/R5/R10, mINP to the trackers under ``eval/``);
4. at the end rank 0 writes, in ``<run.output_dir>/<run.name>/``: ``backbone.pt`` (the plain state_dict of
   the feature model, i.e. the backbone, gathered under ZeRO-3) and ``backbone.safetensors`` (the same
   tensors), ``features.pt`` (the test features, the file ``reidscale evaluate`` reads) and
   ``results.json`` (metrics before and after).

The micro-batch of the engine is derived: ``train.micro_batch`` = P / world × K, no gradient accumulation
(the PK batch is the unit of triplet mining and of BatchNorm statistics).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from reidscale.config import Config, write_run_record
from reidscale.data.finetune_set import finetune_train_data
from reidscale.engine.config import TrainConfig
from reidscale.jobs.common import gathered_state_dict, split_metrics, write_run_outputs
from reidscale.models.config import backbone_from_config
from reidscale.objectives.base import Objective
from reidscale.objectives.finetune import FinetuneObjective
from reidscale.utils.dist import get_rank, get_world_size


@dataclass
class FinetuneSummary:
    """What a fine-tuning run did (rank 0's view)."""

    run_dir: Path
    steps: int
    before: dict[str, float]
    after: dict[str, float]
    weights: Path | None
    features: Path | None
    results: Path | None


def derived_train_config(config: Config, world_size: int) -> TrainConfig:
    """``config.train`` with the micro-batch set to this rank's PK batch and no gradient accumulation.

    Raises:
        ValueError: ``finetune.ids_per_batch`` is not a multiple of the world size, or ``model.img_size``
            is not the fine-tuning image size.
    """
    size = [config.finetune.image_height, config.finetune.image_width]
    if list(config.model.img_size) != size:
        raise ValueError(
            f"model.img_size {list(config.model.img_size)} must equal [finetune.image_height, "
            f"finetune.image_width] = {size} (the backbone is built for the input it is trained on)"
        )
    ids = config.finetune.ids_per_batch
    if ids % world_size:
        raise ValueError(
            f"finetune.ids_per_batch ({ids}) must be a multiple of the number of ranks ({world_size})"
        )
    micro = ids // world_size * config.finetune.images_per_id
    return dataclasses.replace(config.train, micro_batch=micro, global_batch=None, grad_accumulation=1)


def test_metrics(model: nn.Module, config: Config, device: torch.device) -> tuple[dict[str, float], Any]:
    """(metrics, features) of ``model`` on the test split of ``finetune.dataset`` (every rank computes)."""
    size = (config.finetune.image_height, config.finetune.image_width)
    return split_metrics(
        model,
        config.finetune.dataset,
        config.finetune.dataset_root,
        size,
        config.finetune.flip_test,
        config.eval,
        device,
    )


def run_finetune(config: Config) -> FinetuneSummary:
    """Fine-tune ``config.model`` on ``config.finetune.dataset`` with the engine (see the module doc)."""
    from reidscale.engine.distributed import distributed
    from reidscale.tracking.from_config import tracker_from_config

    with distributed():
        rank, world = get_rank(), get_world_size()
        train_config = derived_train_config(config, world)
        run_dir = Path(config.run.output_dir) / config.run.name
        dataset, sampler = finetune_train_data(config.finetune, config.run.seed, rank, world)
        loader = DataLoader(dataset, batch_sampler=sampler)
        torch.manual_seed(config.run.seed)  # the same initial weights on every rank
        objective = FinetuneObjective.from_config(
            backbone_from_config(config.model), dataset.num_pids, config.finetune
        )
        if rank == 0:
            write_run_record(run_dir / "finetune", config)
        tracker = tracker_from_config(config, run_dir, run_dir / "metrics.jsonl")
        with tracker:
            return _train_and_report(config, train_config, objective, loader, run_dir, tracker, rank)


def _train_and_report(
    config: Config,
    train_config: TrainConfig,
    objective: FinetuneObjective,
    loader: DataLoader,
    run_dir: Path,
    tracker: Any,
    rank: int,
) -> FinetuneSummary:
    from reidscale.engine.trainer import Trainer

    last: dict[str, Any] = {}  # the latest evaluation: step, metrics, features

    def evaluate(current: Objective, step: int) -> dict[str, float]:
        metrics, features = test_metrics(current.feature_model(), config, trainer.device)
        last.update(step=step, metrics=metrics, features=features)
        return metrics

    trainer = Trainer(objective, train_config, run_dir, tracker=tracker, eval_fn=evaluate)
    before = evaluate(trainer.objective, 0)
    tracker.log({f"eval/{key}": value for key, value in before.items()}, step=0)
    result = trainer.run(loader)  # evaluates at the end too
    model = trainer.objective.feature_model()
    if last["step"] != result.steps_done:
        evaluate(trainer.objective, result.steps_done)
    after, features = last["metrics"], last["features"]
    weights = gathered_state_dict(model)
    if rank != 0:
        return FinetuneSummary(run_dir, result.steps_done, before, after, None, None, None)
    results = {"steps": result.steps_done, "before": before, "after": after}
    paths = write_run_outputs(run_dir, weights, features, results)
    return FinetuneSummary(
        run_dir, result.steps_done, before, after, paths["weights"], paths["features"], paths["results"]
    )
