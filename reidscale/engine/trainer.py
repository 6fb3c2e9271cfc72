"""``Trainer``: runs an ``Objective`` with DeepSpeed (ZeRO 0-3), following the protocol of
``reidscale.objectives.base``, with per-iteration schedules, the non-finite loss guard, checkpoints that
resume exactly, SIGTERM handling, throughput tracking and an optional evaluation callback.

Usage, on every rank (``distributed()`` reads the launcher's environment and tears the group down)::

    with distributed():
        objective = MyObjective(...)                      # same seed on every rank
        result = Trainer(objective, train_config, run_dir, tracker=tracker).run(loader)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor

from reidscale.engine.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint, set_rng_state
from reidscale.engine.clipping import clip_engine_per_param_
from reidscale.engine.config import (
    ScheduleConfig,
    TrainConfig,
    check_train_config,
    grad_accumulation,
    plain_dict,
)
from reidscale.engine.data_position import iterate_from, sampler_state
from reidscale.engine.deepspeed_config import render_deepspeed_config
from reidscale.engine.guards import NonFiniteLossError, NonFiniteReport, check_finite
from reidscale.engine.param_groups import apply_schedule, build_optimizer
from reidscale.engine.preemption import PreemptionFlag
from reidscale.engine.schedules import schedule_values
from reidscale.engine.throughput import StepTimer
from reidscale.objectives.base import Objective, StepOutput
from reidscale.tracking.base import NullTracker, Tracker
from reidscale.utils.dist import get_rank, get_world_size

logger = logging.getLogger(__name__)
#: ``evaluator(objective, step) -> {name: value}``, e.g. ``reidscale.evaluation.SplitEvaluator``
EvaluatorFn = Callable[[Objective, int], Mapping[str, float]]


@dataclass
class TrainResult:
    """What ``Trainer.run`` did on this rank."""

    steps_done: int
    losses: list[float] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)
    preempted: bool = False
    #: the signal that stopped the run on this rank (None when it reached another rank first, or none did)
    stop_signal: int | None = None
    last_checkpoint: Path | None = None


@dataclass
class _LoopCursor:
    step: int = 0
    epoch: int = 0
    position: int = 0  # micro-batches consumed in this epoch (the checkpoint key "position")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def same_on_all_ranks(value: Any, world_size: int) -> bool:
    """True when ``value`` serialises to the same bytes on every rank (a collective when world_size > 1)."""
    if world_size == 1:
        return True
    buffer = io.BytesIO()
    torch.save(value, buffer)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    digests: list[Any] = [None] * world_size
    torch_dist.all_gather_object(digests, digest)
    return len(set(digests)) == 1


def move_batch(batch: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """``batch`` with every tensor on ``device``; floating tensors cast to ``dtype`` when given."""
    if isinstance(batch, Tensor):
        cast = dtype if dtype is not None and batch.is_floating_point() else None
        return batch.to(device=device, dtype=cast) if cast is not None else batch.to(device)
    if isinstance(batch, Mapping):
        return {key: move_batch(value, device, dtype) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_batch(value, device, dtype) for value in batch)
    return batch


class Trainer:
    """Drives ``objective`` with DeepSpeed according to ``config`` (see the module docstring).

    run_dir: the run folder (checkpoints default to ``run_dir/checkpoints``).
    tracker: where metrics go (rank 0's tracker; None = nothing logged). The tracker step is the number
        of optimizer steps done: train metrics every ``log_every`` steps (loss parts averaged over ranks,
        schedule values, throughput), eval metrics under ``eval/``.
    evaluator: ``evaluator(objective, step) -> {name: value}``, called on every rank every ``eval_every``
        steps and at the end; the values are logged under ``eval/``.
    """

    def __init__(
        self,
        objective: Objective,
        config: TrainConfig,
        run_dir: str | Path,
        tracker: Tracker | None = None,
        evaluator: EvaluatorFn | None = None,
    ) -> None:
        import deepspeed

        if not isinstance(objective, Objective):
            raise ValueError(f"objective must be a reidscale Objective, got {type(objective).__name__}")
        self.world_size = get_world_size()
        if self.world_size > 1 and not torch_dist.is_initialized():
            raise ValueError("WORLD_SIZE > 1 but no process group: run inside engine.distributed()")
        self.rank = get_rank()
        self.config = check_train_config(config, self.world_size)
        self.schedule = self.config.schedule  # warmup_epochs resolved when the run knows its data
        self.accumulation = grad_accumulation(config, self.world_size)
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = (
            Path(config.checkpoint.dir) if config.checkpoint.dir else self.run_dir / "checkpoints"
        )
        self.tracker = tracker if tracker is not None else NullTracker()
        self.evaluator = evaluator
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        if self.dtype is not None:  # DeepSpeed bf16 + BatchNorm fails on a dtype mismatch unless cast first
            objective = objective.to(self.dtype)
        self.objective = objective
        optim = config.optimizer
        optimizer = build_optimizer(
            objective,
            optim.name,
            optim.lr,
            optim.weight_decay,
            optim.betas,
            optim.eps,
            optim.momentum,
            optim.nesterov,
        )
        self.base_optimizer = optimizer
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=objective, optimizer=optimizer, config=render_deepspeed_config(config, self.world_size)
        )
        self.device = torch.device(self.engine.device)
        seed_everything(config.seed + self.rank)
        self.timer = StepTimer(self.device)
        self._last_eval = -1
        self._step_bar: Iterator[int] = iter(())

    # ----------------------------------------------------------------------------------------- run
    def total_steps(self, loader: Iterable[Any]) -> int:
        """Optimizer steps of the run: max_steps, or epochs × (len(loader) // grad_accumulation)."""
        if self.config.max_steps is not None:
            return self.config.max_steps
        per_epoch = self.steps_per_epoch(loader)
        return self.config.epochs * per_epoch  # type: ignore[operator]

    def steps_per_epoch(self, loader: Iterable[Any]) -> int:
        if not hasattr(loader, "__len__"):
            raise ValueError("the loader has no len(): set train.max_steps instead of train.epochs")
        steps = len(loader) // self.accumulation  # type: ignore[arg-type]
        if steps < 1:
            raise ValueError(
                f"the loader yields {len(loader)} micro-batches per epoch, fewer than one optimizer step "  # type: ignore[arg-type]
                f"({self.accumulation} micro-batches)"
            )
        return steps

    def resolved_schedule(self, loader: Iterable[Any]) -> ScheduleConfig:
        """``config.schedule`` with ``warmup_epochs`` turned into ``warmup_steps`` for this loader."""
        schedule = self.config.schedule
        if not schedule.warmup_epochs:
            return schedule
        steps = round(schedule.warmup_epochs * self.steps_per_epoch(loader))
        return dataclasses.replace(schedule, warmup_steps=steps, warmup_epochs=0.0)

    def run(self, loader: Iterable[Any], until_step: int | None = None) -> TrainResult:
        """Train to the last step; resume first when ``checkpoint.resume`` says so.

        loader: this rank's micro-batches, iterable once per epoch (see ``data_position``).
        until_step: stop after this many steps (of the full run's schedule) with a checkpoint, as on
            SIGTERM, e.g. to split a run over time-limited jobs. None = run to the end.
        """
        total = self.total_steps(loader)
        self.schedule = self.resolved_schedule(loader)
        stop_at = total if until_step is None else min(until_step, total)
        if stop_at < 1:
            raise ValueError(f"until_step must be >= 1, got {until_step}")
        cursor, rng, saved_sampler = self._resume()
        result = TrainResult(steps_done=cursor.step)
        if self.rank == 0:
            self.tracker.log_config({"train": plain_dict(self.config)})
        self._step_bar = self._step_progress(cursor.step, stop_at)
        with PreemptionFlag(grace_s=self.config.checkpoint.stop_grace_s) as preemption:
            while cursor.step < stop_at:
                iterator = iterate_from(loader, cursor.epoch, cursor.position, saved_sampler)
                saved_sampler = None
                if rng is not None:  # after the iterator exists: creating one may draw from the RNG
                    set_rng_state(rng)
                    rng = None
                finished_epoch = self._run_epoch(
                    iterator, loader, cursor, (stop_at, total), result, preemption
                )
                if result.preempted:
                    self._close_progress()
                    return result
                if finished_epoch:
                    cursor.epoch, cursor.position = cursor.epoch + 1, 0
        self._close_progress()
        if cursor.step == total:
            self._maybe_eval(cursor.step, force=True)
        result.last_checkpoint = self._save(cursor, loader)
        return result

    def _step_progress(self, first: int, stop_at: int) -> Iterator[int]:
        """The tracker's progress display over the steps first..stop_at (a console bar on rank 0).

        A display counts an element when the next one is requested, so the iterator is primed here and
        advanced once per optimizer step (``_step``): the last step's advance ends it. A run that stops
        early (preemption) closes it where it is (``_close_progress``).
        """
        steps = self.tracker.progress(range(first, stop_at), total=stop_at - first, desc="train steps")
        progress = iter(steps)
        next(progress, None)
        return progress

    def _close_progress(self) -> None:
        close = getattr(self._step_bar, "close", None)
        if close is not None:
            close()

    def _run_epoch(
        self,
        iterator: Iterator[Any],
        loader: Iterable[Any],
        cursor: _LoopCursor,
        stop_and_total: tuple[int, int],
        result: TrainResult,
        preemption: PreemptionFlag,
    ) -> bool:
        """Optimizer steps until the epoch's data or the run ends; True when the data ran out."""
        stop_at, total = stop_and_total
        epoch_end = self.steps_per_epoch(loader) * self.accumulation if hasattr(loader, "__len__") else None
        while cursor.step < stop_at:
            if epoch_end is not None and cursor.position >= epoch_end:
                return True  # a last partial accumulation window of the epoch is dropped
            if not self._step(iterator, loader, cursor, total, result):
                return True
            if preemption.agreed(self.world_size, self.device):
                result.last_checkpoint = self._save(cursor, loader)
                result.preempted, result.stop_signal = True, preemption.received
                return False
            if self.config.checkpoint.every and cursor.step % self.config.checkpoint.every == 0:
                result.last_checkpoint = self._save(cursor, loader)
            self._maybe_eval(cursor.step)
        return False

    # ---------------------------------------------------------------------------------------- step
    def _step(
        self,
        iterator: Iterator[Any],
        loader: Iterable[Any],
        cursor: _LoopCursor,
        total: int,
        result: TrainResult,
    ) -> bool:
        """One optimizer step (``accumulation`` micro-batches); False when the epoch's data ran out first."""
        step = cursor.step
        values = schedule_values(step, total, self.config.optimizer, self.schedule)
        apply_schedule(self.optimizer, values)
        self.objective.before_step(step, values)
        self.timer.reset()
        outcome = self._accumulate(iterator, loader, cursor)
        if outcome is None:
            return False
        losses, parts, report = outcome
        self._optimizer_step(skip=report is not None)
        if report is None:
            self.objective.after_step(step, values)
        else:
            logger.warning("%s: step skipped on every rank (nan_policy=skip)", report.message())
            result.skipped_steps.append(step)
        loss = float(torch.stack(losses).mean())
        result.losses.append(loss)
        cursor.step += 1
        result.steps_done = cursor.step
        next(self._step_bar, None)
        if cursor.step % self.config.log_every == 0 or cursor.step == total:
            self._log(cursor.step, loss, parts, values)
        return True

    def _accumulate(
        self, iterator: Iterator[Any], loader: Iterable[Any], cursor: _LoopCursor
    ) -> tuple[list[Tensor], dict[str, list[Tensor]], NonFiniteReport | None] | None:
        """Forward + guard + backward over the micro-batches of one step, up to (not including) the
        optimizer step. Returns (losses, parts, non-finite report or None); None when the data ran out."""
        losses: list[Tensor] = []
        parts: dict[str, list[Tensor]] = {}
        report: NonFiniteReport | None = None
        for micro in range(self.accumulation):
            with self.timer.phase("data"):
                batch = next(iterator, None)
            if batch is None:
                if micro:
                    raise ValueError(
                        "the data ended inside an accumulation window (len(loader) % accumulation)"
                    )
                return None
            out = self._forward(batch)
            report = report or check_finite(out.loss, out.parts, cursor.step, self.rank, self.world_size)
            if report is not None and self.config.nan_policy == "stop":
                self._stop(report, cursor, loader, micro)
            with self.timer.phase("backward"):
                self.engine.backward(out.loss)
            cursor.position += 1
            losses.append(out.loss.detach().float())
            for name, value in out.parts.items():
                parts.setdefault(name, []).append(value.detach().float())
            if micro + 1 < self.accumulation:
                self.engine.step()  # inside the accumulation window DeepSpeed only counts micro-steps
        return losses, parts, report

    def _forward(self, batch: Any) -> StepOutput:
        batch = move_batch(batch, self.device, self.dtype)
        with self.timer.phase("forward"):
            out = self.engine(batch)
        if not isinstance(out, StepOutput):
            raise ValueError(
                f"{type(self.objective).__name__}.forward must return StepOutput, got {type(out)}"
            )
        self.timer.images += int(out.num_images)
        return out

    def _optimizer_step(self, skip: bool) -> None:
        if not self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError("DeepSpeed's micro-step count is out of step with the trainer's accumulation")
        with self.timer.phase("optimizer"):
            if not skip and self.config.clip.mode == "per_param":
                clip_engine_per_param_(self.engine.module, self.config.clip.value)
            self.base_optimizer.skip_next_step = skip
            try:
                self.engine.step()
            finally:
                self.base_optimizer.skip_next_step = False

    def _stop(self, report: NonFiniteReport, cursor: _LoopCursor, loader: Iterable[Any], micro: int) -> None:
        cursor.position -= micro  # the checkpoint restarts this step from its first micro-batch
        path = self._save(cursor, loader)
        raise NonFiniteLossError(f"{report.message()}; checkpoint of the last good step saved to {path}")

    # ------------------------------------------------------------------------------ state & logging
    def _client_state(self, cursor: _LoopCursor, loader: Iterable[Any]) -> dict[str, Any]:
        return {
            "step": cursor.step,
            "epoch": cursor.epoch,
            "position": cursor.position,
            "sampler": sampler_state(loader),
            "schedule": plain_dict(self.config.schedule) | {"optimizer": plain_dict(self.config.optimizer)},
            "world_size": self.world_size,
        }

    def _save(self, cursor: _LoopCursor, loader: Iterable[Any]) -> Path:
        """Checkpoint; the objective's extra state rides in client_state when every rank holds the same,
        else (or when the objective declares it per rank, e.g. bank shards) in each rank's own file."""
        client_state = self._client_state(cursor, loader)
        extra = self.objective.extra_state()
        per_rank = self.objective.extra_state_per_rank and self.world_size > 1
        shared = not per_rank and same_on_all_ranks(extra, self.world_size)
        client_state["objective"] = extra if shared else None
        return save_checkpoint(
            self.engine,
            self.checkpoint_dir,
            cursor.step,
            client_state,
            self.config.checkpoint.keep_last,
            rank_state=None if shared else {"objective": extra},
        )

    def checkpoint_to_resume(self) -> Path | None:
        """The checkpoint folder ``run`` will resume from (``checkpoint.resume``), or None for a fresh start.

        Raises:
            ValueError: ``checkpoint.resume`` names a path that holds no checkpoint.
        """
        resume = self.config.checkpoint.resume
        if resume is None:
            return None
        folder = resolve_checkpoint(self.checkpoint_dir if resume == "auto" else resume)
        if folder is None and resume != "auto":
            raise ValueError(f"train.checkpoint.resume={resume!r} holds no checkpoint")
        return folder

    def _resume(self) -> tuple[_LoopCursor, dict[str, Any] | None, dict[str, Any] | None]:
        """Load the checkpoint named by ``checkpoint.resume``; returns (position, rng, sampler state)."""
        folder = self.checkpoint_to_resume()
        if folder is None:
            return _LoopCursor(), None, None
        state, rng, own = load_checkpoint(self.engine, folder)
        extra = state.get("objective")
        if extra is None:
            if own is None:
                raise ValueError(f"{folder} holds per-rank objective state but none for rank {self.rank}")
            extra = own["objective"]
        self.objective.load_extra_state(extra)
        self._check_resumed_settings(state, folder)
        if rng is None:
            logger.warning(
                "%s has no RNG state for rank %d; reseeding (resume is not exact)", folder, self.rank
            )
            seed_everything(self.config.seed + self.rank + 1_000_003 * int(state["step"]))
        return (
            _LoopCursor(int(state["step"]), int(state["epoch"]), int(state["position"])),
            rng,
            state.get("sampler"),
        )

    def _check_resumed_settings(self, state: dict[str, Any], folder: Path) -> None:
        """Warn when the schedule or the world size changed since the checkpoint (then not exact)."""
        now = self._client_state(_LoopCursor(), [])
        for key in ("schedule", "world_size"):
            if key in state and state[key] != now[key]:
                logger.warning("%s was saved with %s=%s, this run has %s", folder, key, state[key], now[key])

    def _log(
        self, steps_done: int, loss: float, parts: dict[str, list[Tensor]], values: dict[str, float]
    ) -> None:
        names = sorted(parts)
        local = torch.tensor(
            [loss] + [float(torch.stack(parts[n]).mean()) for n in names], device=self.device
        )
        if self.world_size > 1:
            torch_dist.all_reduce(local)
            local /= self.world_size
        metrics: dict[str, float] = {"train/loss": float(local[0])}
        metrics.update(
            {f"train/{name}": float(value) for name, value in zip(names, local[1:].tolist(), strict=True)}
        )
        metrics.update({f"schedule/{key}": value for key, value in values.items()})
        metrics.update(self.timer.metrics(self.world_size))
        self.tracker.log(metrics, step=steps_done)

    def _maybe_eval(self, step: int, force: bool = False) -> None:
        every = self.config.eval_every or 0
        if self.evaluator is None or step == self._last_eval or not (force or (every and step % every == 0)):
            return
        self._last_eval = step
        metrics = dict(self.evaluator(self.objective, step))
        self.tracker.log({f"eval/{key}": value for key, value in metrics.items()}, step=step)
