"""The one training job: ``reidscale pretrain`` and ``reidscale finetune`` run every method through it.

Runs on every rank that the launcher started (``deepspeed``, ``torchrun``, ``accelerate launch``, ``srun``,
or one plain process). For the method's spec (``reidscale.methods``):

1. ``spec.build_data``: this rank's training data at the input size ``model.img_size``;
2. the engine settings: ``train`` with the fields the method derives (``spec.derive_train``; setting one
   of them is an error that names it);
3. ``model.*`` builds the backbone (same seed on every rank; ``model.weights`` starts it from a weights
   file, e.g. an earlier run's ``backbone.pt``), ``spec.build_objective`` the objective around it;
4. the engine (``Trainer``) places it; ``Objective.setup`` builds what depends on the run (memory banks,
   queues, teachers), filled unless a checkpoint is resumed;
5. ``spec.eval_plan``'s split is evaluated before training, every ``train.eval_every`` steps and at the
   end (mAP, R1/R5/R10, mINP under ``eval/``) by a ``SplitEvaluator``;
6. rank 0 writes, in ``<run.output_dir>/<run.name>/``: ``backbone.pt`` (the backbone's plain state_dict,
   what ``create_backbone(model.name)`` loads and ``finetune`` / ``extract`` / ``export`` take as
   ``model.weights``), ``backbone.safetensors`` (the same tensors), ``heads.pt`` (the method's heads,
   when it keeps any), ``features.pt`` (the last evaluation's features), ``results.json``
   ``{"status": "completed", "steps", "total_steps", "before", "skipped", "after", "evaluations",
   "protocol"}`` (fractions; ``skipped``: the data's skip counts by reason, e.g. ``{"reader": {...},
   "decode": {...}}``, ``{}`` when the method reports none), ``skipped.jsonl`` (one
   ``{"stage", "file", "record", "reason"}`` line per skipped item the data named; absent when none) and
   ``rank_list.png`` (``eval.num_visualize`` queries).
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from reidscale.config import write_run_record
from reidscale.engine.checkpoint import TAG_PATTERN
from reidscale.engine.config import TrainConfig, with_derived_fields
from reidscale.evaluation.during_training import SplitEvaluator
from reidscale.jobs.outputs import write_run_outputs
from reidscale.jobs.preflight import check_before_training
from reidscale.jobs.run_lock import claim_run_folder
from reidscale.methods.spec import MethodSpec
from reidscale.objectives.base import TrainingContext
from reidscale.utils.dist import get_rank, get_world_size
from reidscale.utils.io import atomic_write_json, atomic_write_text


@dataclass
class TrainSummary:
    """What a training run did (rank 0's view; ``paths`` is empty on other ranks).

    paths: output name → file (``weights``, ``safetensors``, ``heads``, ``features``, ``results``,
    ``rank_list``; see ``jobs.outputs.write_run_outputs``); a stopped run has ``results`` only.
    status: ``completed``, or ``stopped`` before the last step (``stopped_by``: ``until_step`` or the
        signal's name, e.g. ``SIGTERM``; resume with ``train.checkpoint.resume=auto``).
    """

    run_dir: Path
    steps: int
    before: dict[str, float]
    after: dict[str, float]
    paths: dict[str, Path]
    status: str = "completed"
    stopped_by: str | None = None


def train_settings(spec: MethodSpec, config: Any, world_size: int, batches_per_epoch: int) -> TrainConfig:
    """``config.train`` with the fields ``spec`` derives for ``world_size`` ranks (ValueError naming a
    derived field the user set, or a batch that does not split over the ranks)."""
    derived = spec.derive_train(config, world_size, batches_per_epoch)
    return with_derived_fields(config.train, derived.values, spec.command, derived.reasons)


def run_training(config: Any, spec: MethodSpec) -> TrainSummary:
    """Train ``spec``'s method as ``config`` (the command's resolved root) says (see the module doc).

    Raises:
        ValueError: listing every problem the pre-flight checks find (``jobs.preflight``), before anything
            is built or created.
    """
    from reidscale.engine.distributed import distributed
    from reidscale.engine.trainer import Trainer
    from reidscale.models.config import backbone_from_config
    from reidscale.tracking.from_config import tracker_from_config

    check_before_training(config, spec)

    with distributed(), claim_run_folder(config) as run_dir:  # one writer; no fresh run over an earlier one
        rank, world = get_rank(), get_world_size()
        train_settings(spec, config, world, batches_per_epoch=1)  # bad settings refused before data is read
        data = spec.build_data(config, rank, world)
        loader = data.loader
        if loader is None:
            loader = DataLoader(data.dataset, batch_sampler=data.batch_sampler, num_workers=data.num_workers)
        train_config = train_settings(spec, config, world, len(loader))
        torch.manual_seed(config.run.seed)  # the same initial weights on every rank
        objective = spec.build_objective(config, backbone_from_config(config.model), data)
        if rank == 0:
            write_run_record(run_dir / spec.command, config)
            if data.facts.get("skipped_entries"):  # one line per skipped record, beside results.json
                lines = "".join(json.dumps(entry) + "\n" for entry in data.facts["skipped_entries"])
                atomic_write_text(run_dir / "skipped.jsonl", lines)
        plan = spec.eval_plan(config)
        size = config.model.input_size
        evaluator = (
            None if plan is None else SplitEvaluator(plan.dataset, plan.root, size, plan.flip, config.eval)
        )
        tracker = tracker_from_config(config, run_dir, run_dir / "metrics.jsonl")
        with tracker:
            trainer = Trainer(objective, train_config, run_dir, tracker=tracker, evaluator=evaluator)
            if rank == 0 and data.summary:
                print(data.summary, flush=True)
            checkpoint = trainer.checkpoint_to_resume()
            trainer.objective.setup(
                TrainingContext(
                    device=trainer.device,
                    rank=rank,
                    world_size=world,
                    steps_per_epoch=trainer.steps_per_epoch(loader),
                    resuming=checkpoint is not None,
                    init_batches=data.init_batches,
                    report=(lambda line: print(line, flush=True)) if rank == 0 else (lambda line: None),
                )
            )
            before = _evaluate_before(trainer, evaluator, tracker, run_dir, checkpoint)
            try:
                result = trainer.run(loader, until_step=spec.until_step(config))  # evaluates at the end too
            except Exception as err:  # e.g. a non-finite loss under nan_policy=stop: say so, keep the error
                if rank == 0:
                    failed = {"status": "failed", "error": f"{type(err).__name__}: {err}", "before": before}
                    atomic_write_json(run_dir / "results.json", failed)
                raise
            total = trainer.total_steps(loader)
            record = {
                "steps": result.steps_done,
                "total_steps": total,
                "before": before,
                "skipped": data.facts.get("skipped", {}),
                "evaluations": evaluator.history if evaluator is not None else [],
                "protocol": {
                    "camera_penalty": config.eval.camera_penalty,
                    "rerank": config.eval.rerank.enabled,
                },
            }
            if result.preempted or result.steps_done < total:  # a signal or until_step: not the end
                return _report_stopped(run_dir, rank, result, record)
            if evaluator is not None and evaluator.latest_step != result.steps_done:
                evaluator(trainer.objective, result.steps_done)
            after = evaluator.latest_metrics if evaluator is not None else {}
            weights, heads = spec.transfer(trainer.objective)  # gathered on every rank under ZeRO-3
            if rank != 0:
                return TrainSummary(run_dir, result.steps_done, before, after, {})
            results = {"status": "completed", **record, "after": after}
            features = evaluator.latest_features if evaluator is not None else None
            paths = write_run_outputs(run_dir, weights, features, results, config.eval, heads)
            if "rank_list" in paths:
                tracker.log_image("eval/rank_list", paths["rank_list"], step=result.steps_done)
            return TrainSummary(run_dir, result.steps_done, before, after, paths)


def _report_stopped(run_dir: Path, rank: int, result: Any, record: dict[str, Any]) -> TrainSummary:
    """A run stopped before its last step (a signal, or ``until_step``): a checkpoint to resume from and a
    ``results.json`` that says so (``"status": "stopped"``, the step reached, how it stopped); no weights
    under the final names, no evaluation at the stop."""
    stopped_by = "until_step" if not result.preempted else signal_name(result.stop_signal)
    summary = TrainSummary(
        run_dir, result.steps_done, record["before"], {}, {}, status="stopped", stopped_by=stopped_by
    )
    if rank == 0:
        checkpoint = None if result.last_checkpoint is None else str(result.last_checkpoint)
        results = {"status": "stopped", "stopped_by": stopped_by, "checkpoint": checkpoint, **record}
        summary.paths["results"] = atomic_write_json(run_dir / "results.json", results)
    return summary


def signal_name(signum: int | None) -> str:
    """``SIGTERM`` for 15, ...; ``a signal`` when the signal reached another rank first."""
    if signum is None:
        return "a signal"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _evaluate_before(
    trainer: Any, evaluator: SplitEvaluator | None, tracker: Any, run_dir: Path, checkpoint: Path | None
) -> dict[str, float]:
    """The metrics of the untrained model: evaluated now on a fresh run; on a resumed one, what the earlier
    part of the run wrote (its evaluations up to the checkpoint also go back into the history)."""
    if checkpoint is not None:
        before, earlier = _earlier_results(run_dir / "results.json", checkpoint)
        if evaluator is not None:
            evaluator.restore(earlier)
        return before
    if evaluator is None:
        return {}
    before = evaluator(trainer.objective, 0)
    tracker.log({f"eval/{key}": value for key, value in before.items()}, step=0)
    return before


def _earlier_results(path: Path, checkpoint: Path) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``(before, evaluations up to the checkpoint's step)`` from the results.json an earlier part of a
    resumed run wrote; empty when there is none (e.g. a checkpoint copied from elsewhere)."""
    if not path.is_file():
        return {}, []
    results = json.loads(path.read_text(encoding="utf-8"))
    step = int(TAG_PATTERN.match(checkpoint.name).group(1))  # type: ignore[union-attr]
    earlier = [entry for entry in results.get("evaluations", []) if entry.get("step", step + 1) <= step]
    return dict(results.get("before", {})), earlier
