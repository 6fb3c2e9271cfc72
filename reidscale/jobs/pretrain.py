"""``reidscale pretrain``: unsupervised pre-training (selective contrastive learning, docs/methods.md).

Runs on every rank that the launcher started (``deepspeed``, ``torchrun``, ``accelerate launch``, ``srun``,
or one plain process). The flow:

1. ``pretrain_data``: the training crops (videos + tracklets decoded by the data pipeline, or a Market-format
   folder), decoded once into a crop cache; each rank draws ``pretrain.batch_size / world`` images per step;
2. ``model.*`` builds the backbone (same seed on every rank; ``model.weights`` continues from a weights
   file, e.g. an earlier run's ``backbone.pt``), ``scl.*`` the heads (always fresh) and the row-sharded
   memory banks (each rank owns a block of rows), filled by one pass over the data (each rank its rows)
   unless a checkpoint is resumed;
3. ``pretrain.eval_dataset`` at ``pretrain.eval_root`` (Market-format query/gallery) is evaluated before
   training, every ``pretrain.eval_every_epochs`` epochs and at the end (mAP, R1/R5/R10, mINP under
   ``eval/``);
4. rank 0 writes, in ``<run.output_dir>/<run.name>/``: ``backbone.pt`` (the backbone's plain state_dict,
   what ``create_backbone(model.name)`` loads and ``finetune`` / ``extract`` / ``export`` take as
   ``model.weights``) and ``backbone.safetensors`` (the same tensors), ``heads.pt`` (the global and stripe
   heads), ``features.pt``, ``results.json`` ``{"steps", "before", "after", "eval"}`` (fractions) and
   ``rank_list.png`` (``eval.num_visualize`` queries).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from reidscale.config import Config, write_run_record
from reidscale.engine.checkpoint import TAG_PATTERN
from reidscale.engine.config import TrainConfig
from reidscale.jobs.common import gathered_state_dict, split_metrics, write_run_outputs
from reidscale.models.weights import split_prefix
from reidscale.utils.dist import get_rank, get_world_size


@dataclass
class PretrainSummary:
    """What a pre-training run did (rank 0's view; the paths are None on other ranks)."""

    run_dir: Path
    steps: int
    before: dict[str, float]
    after: dict[str, float]
    paths: dict[str, Path]


def derived_train_config(config: Config, world_size: int, steps_per_epoch: int) -> TrainConfig:
    """``config.train`` with this rank's micro-batch, no accumulation and eval_every in steps.

    Raises:
        ValueError: the batch does not split over the ranks, or ``model.img_size`` is not the crop size.
    """
    size = [config.pretrain_data.image_height, config.pretrain_data.image_width]
    if list(config.model.img_size) != size:
        raise ValueError(
            f"model.img_size {list(config.model.img_size)} must equal [pretrain_data.image_height, "
            f"pretrain_data.image_width] = {size} (the backbone is built for the input it is trained on)"
        )
    batch = config.pretrain.batch_size
    if batch % world_size:
        raise ValueError(
            f"pretrain.batch_size ({batch}) must be a multiple of the number of ranks ({world_size})"
        )
    eval_every = config.pretrain.eval_every_epochs * steps_per_epoch
    return dataclasses.replace(
        config.train,
        micro_batch=batch // world_size,
        global_batch=None,
        grad_accumulation=1,
        eval_every=eval_every,
    )


def own_rows(dataset: Any, start: int, stop: int, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(index [b], un-augmented images [b, 3, H, W])`` over the dataset rows ``[start, stop)``."""
    for first in range(start, stop, batch):
        rows = list(range(first, min(first + batch, stop)))
        yield torch.tensor(rows, dtype=torch.int64), torch.stack([dataset.test_view(i) for i in rows])


def run_pretrain(config: Config) -> PretrainSummary:
    """Pre-train ``config.model`` with ``config.scl`` on ``config.pretrain_data`` (see the module doc)."""
    from reidscale.data.pretrain_set import build_pretrain_set
    from reidscale.engine.distributed import distributed
    from reidscale.engine.trainer import Trainer
    from reidscale.models.config import backbone_from_config
    from reidscale.objectives.selective import SelectiveContrastive
    from reidscale.tracking.from_config import tracker_from_config

    with distributed():
        rank, world = get_rank(), get_world_size()
        run_dir = Path(config.run.output_dir) / config.run.name
        dataset, sampler = build_pretrain_set(
            config.pretrain_data, config.pretrain.batch_size // world, config.run.seed, rank, world
        )
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.pretrain_data.num_workers)
        train_config = derived_train_config(config, world, len(loader))
        torch.manual_seed(config.run.seed)  # the same initial weights on every rank
        objective = SelectiveContrastive(
            backbone_from_config(config.model), config.scl, dataset.cameras, config.run.seed, dataset.pids
        )
        if rank == 0:
            write_run_record(run_dir / "pretrain", config)
        tracker = tracker_from_config(config, run_dir, run_dir / "metrics.jsonl")
        with tracker:
            trainer = Trainer(objective, train_config, run_dir, tracker=tracker, eval_fn=None)
            banks = objective.attach_banks(trainer.device, rank, world)
            objective.set_steps_per_epoch(trainer.steps_per_epoch(loader))
            if rank == 0:
                print(dataset.summary, flush=True)
            checkpoint = trainer.checkpoint_to_resume()
            if checkpoint is None:
                rows = own_rows(dataset, banks.shards.start, banks.shards.stop, config.scl.init_batch_size)
                filled = objective.initialise_banks(rows)
                if rank == 0:
                    print(
                        f"memory banks: {banks.num_rows} rows in {world} shard(s) of "
                        f"{config.scl.bank_dtype}; rank 0 initialised its {filled} rows",
                        flush=True,
                    )
            return _train_and_report(config, trainer, loader, run_dir, tracker, rank, checkpoint)


def _train_and_report(
    config: Config,
    trainer: Any,
    loader: DataLoader,
    run_dir: Path,
    tracker: Any,
    rank: int,
    checkpoint: Path | None,
) -> PretrainSummary:
    evaluations: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    size = (config.pretrain_data.image_height, config.pretrain_data.image_width)

    def evaluate(objective: Any, step: int) -> dict[str, float]:
        if config.pretrain.eval_dataset is None:
            return {}
        metrics, features = split_metrics(
            objective.feature_model(),
            config.pretrain.eval_dataset,
            config.pretrain.eval_root,
            size,
            config.pretrain.flip_test,
            config.eval,
            trainer.device,
        )
        last.update(step=step, features=features)
        evaluations.append({"step": step, **metrics})
        return metrics

    trainer.eval_fn = evaluate
    if checkpoint is None:
        before = evaluate(trainer.objective, 0)
        if before:
            tracker.log({f"eval/{key}": value for key, value in before.items()}, step=0)
    else:  # the earlier part of the run evaluated the untrained model and wrote it down
        before, earlier = _earlier_results(run_dir / "results.json", checkpoint)
        evaluations.extend(earlier)
    result = trainer.run(loader, until_step=config.pretrain.until_step)  # evaluates at the end too
    if config.pretrain.eval_dataset is not None and last.get("step") != result.steps_done:
        evaluate(trainer.objective, result.steps_done)
    after = dict(evaluations[-1]) if evaluations else {}
    after.pop("step", None)
    weights, heads = split_prefix(gathered_state_dict(trainer.objective.net), "backbone.")
    if rank != 0:
        return PretrainSummary(run_dir, result.steps_done, before, after, {})
    results = {
        "steps": result.steps_done,
        "before": before,
        "after": after,
        "evaluations": evaluations,
        "protocol": {"camera_penalty": config.eval.camera_penalty, "rerank": config.eval.rerank.enabled},
    }
    paths = write_run_outputs(run_dir, weights, last.get("features"), results, config.eval, heads)
    if "rank_list" in paths:
        tracker.log_image("eval/rank_list", paths["rank_list"], step=result.steps_done)
    return PretrainSummary(run_dir, result.steps_done, before, after, paths)


def _earlier_results(path: Path, checkpoint: Path) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``(before, evaluations up to the checkpoint's step)`` from the results.json an earlier part of a
    resumed run wrote; empty when there is none (e.g. a checkpoint copied from elsewhere)."""
    if not path.is_file():
        return {}, []
    results = json.loads(path.read_text(encoding="utf-8"))
    step = int(TAG_PATTERN.match(checkpoint.name).group(1))  # type: ignore[union-attr]
    earlier = [entry for entry in results.get("evaluations", []) if entry.get("step", step + 1) <= step]
    return dict(results.get("before", {})), earlier
