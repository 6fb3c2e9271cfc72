"""A tiny objective, data and a 2-rank driver script for the engine tests.

Run by the tests as
``torchrun --standalone --nproc_per_node 2 tests/support/engine_toy.py SCENARIO OUT_DIR``;
each scenario trains with ``Trainer`` and writes what the test compares (weights, losses, messages) to
OUT_DIR.
"""

from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from reidscale.models.ema import ema_master, ema_update_
from reidscale.objectives.base import Objective, StepOutput
from tests.support.ports import free_port
from tests.support.processes import run_command

IN_DIM, HIDDEN, OUT_DIM = 6, 8, 3

TOY = Path(__file__).resolve()
ROOT = TOY.parents[2]


def launch(scenario: str, out: Path, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    """Run the scenario on 2 CPU ranks with ``torchrun`` or ``deepspeed``; stdout and stderr merged."""
    bin_dir = Path(sys.executable).parent
    if launcher == "torchrun":
        command = [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    elif launcher == "deepspeed":
        command = [str(bin_dir / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
    else:
        raise ValueError(f"launcher must be torchrun or deepspeed, got {launcher!r}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return run_command([*command, str(TOY), scenario, str(out)], env=env, cwd=ROOT, merge_stderr=True)


class ToyObjective(Objective):
    """MLP with LayerNorm and dropout; loss = mse + 0.1·l1 of a regression, times a random factor drawn
    from python and numpy RNGs when ``rng_scale`` (so every RNG matters for exact resume).

    Optional EMA teacher (a frozen copy updated in ``after_step`` with the momentum schedule), a
    non-finite loss injected on ``nan_rank`` at ``nan_step``, and SIGTERM sent to itself on
    ``sigterm_rank`` after ``sigterm_step``. ``extra_state`` carries a step counter and a running mean.
    """

    name = "toy"

    def __init__(self, dropout: float = 0.0, rng_scale: bool = False, teacher: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(IN_DIM, HIDDEN),
            nn.LayerNorm(HIDDEN),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(HIDDEN, OUT_DIM),
        )
        self.teacher = copy.deepcopy(self.net).requires_grad_(False) if teacher else None
        self.rng_scale = rng_scale
        self.nan_step: int | None = None
        self.nan_rank = 0
        self.sigterm_step: int | None = None
        self.sigterm_rank = 0
        self.step_now = 0
        self.seen_steps = 0
        self.running = torch.zeros(OUT_DIM)
        self.snapshots: dict[int, dict[str, Tensor]] = {}

    def forward(self, batch: dict[str, Tensor]) -> StepOutput:
        pred = self.net(batch["x"])
        mse = (pred - batch["y"]).pow(2).mean()
        l1 = (pred - batch["y"]).abs().mean()
        if self.rng_scale:
            factor = 1.0 + 0.1 * float(np.random.rand()) + 0.1 * random.random()
            mse, l1 = mse * factor, l1 * factor
        rank = int(os.environ.get("RANK", "0"))
        if self.nan_step == self.step_now and self.nan_rank == rank:
            mse = mse * float("nan")
        self.running = 0.9 * self.running + 0.1 * pred.detach().float().mean(0).cpu()
        return StepOutput(mse + 0.1 * l1, {"mse": mse, "l1": l1}, num_images=int(batch["x"].shape[0]))

    def before_step(self, step: int, schedule_values: dict[str, float]) -> None:
        self.step_now = step
        self.snapshots[step] = {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def after_step(self, step: int, schedule_values: dict[str, float]) -> None:
        self.seen_steps += 1
        if self.teacher is not None:
            ema_update_(self.teacher, self.net, schedule_values["momentum"])
        if self.sigterm_step == step and self.sigterm_rank == int(os.environ.get("RANK", "0")):
            os.kill(os.getpid(), signal.SIGTERM)

    def extra_state(self) -> dict[str, Any]:
        return {"seen_steps": self.seen_steps, "running": self.running.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.seen_steps = int(state["seen_steps"])
        self.running = state["running"].clone()

    def feature_model(self) -> nn.Module:
        return self.teacher if self.teacher is not None else self.net


def fixed_data(num_rows: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Inputs (num_rows, IN_DIM) and targets (num_rows, OUT_DIM) of a noisy linear map."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rows, IN_DIM, generator=gen)
    y = x @ torch.randn(IN_DIM, OUT_DIM, generator=gen) + 0.1 * torch.randn(num_rows, OUT_DIM, generator=gen)
    return x, y


def global_batch_rows(
    step: int, micro: int, rank: int, micro_batch: int, world: int, accumulation: int
) -> slice:
    """Rows of the fixed data that rank ``rank`` uses in micro-batch ``micro`` of optimizer step ``step``."""
    per_step = micro_batch * world * accumulation
    start = step * per_step + (micro * world + rank) * micro_batch
    return slice(start, start + micro_batch)


class NoisyDataset(torch.utils.data.Dataset):
    """Fixed rows plus fresh Gaussian noise from the torch RNG at every read (a random augmentation)."""

    def __init__(self, num_rows: int, noise: float = 0.3) -> None:
        self.x, self.y = fixed_data(num_rows, seed=2)
        self.pids = torch.arange(num_rows) // 2
        self.noise = noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"x": self.x[index] + self.noise * torch.randn(IN_DIM), "y": self.y[index]}


def full_state(module: nn.Module) -> dict[str, Tensor]:
    """Parameters of ``module`` as full fp32 tensors (gathered under ZeRO-3; a collective then)."""
    import deepspeed

    params = [p for _, p in module.named_parameters()]
    with deepspeed.zero.GatheredParameters(params):
        return {name: p.detach().float().clone() for name, p in module.named_parameters()}


ZERO_RUNS: tuple[tuple[str, int, str, str], ...] = (
    # name, ZeRO stage, optimizer, clip mode
    ("z0_adamw", 0, "adamw", "none"),
    ("z1_adamw_global", 1, "adamw", "global_norm"),
    ("z2_sgd_perparam", 2, "sgd", "per_param"),
    ("z3_adamw_global", 3, "adamw", "global_norm"),
    ("z3_sgd_perparam", 3, "sgd", "per_param"),
)
ZERO_STEPS, MICRO_BATCH, GLOBAL_BATCH = 4, 4, 16


def zero_config(stage: int, optimizer: str, clip: str, out: Path, name: str) -> Any:
    """The TrainConfig of the ZeRO equivalence runs (the test's reference uses the same one)."""
    from reidscale.engine.config import (
        CheckpointConfig,
        ClipConfig,
        OptimizerConfig,
        ScheduleConfig,
        TrainConfig,
    )

    return TrainConfig(
        zero_stage=stage,
        micro_batch=MICRO_BATCH,
        global_batch=GLOBAL_BATCH,
        max_steps=ZERO_STEPS,
        optimizer=OptimizerConfig(name=optimizer, lr=0.05, weight_decay=0.1, momentum=0.8),
        clip=ClipConfig(mode=clip, value=0.3),
        schedule=ScheduleConfig(
            warmup_steps=1,
            warmup_start_lr=0.01,
            min_lr=0.005,
            weight_decay_end=0.2,
            momentum_start=0.5,
            momentum_end=0.9,
        ),
        checkpoint=CheckpointConfig(dir=str(out / f"ckpt_{name}"), keep_last=1),
        log_every=1,
    )


def rank_batches(rank: int, world: int, accumulation: int, steps: int) -> list[dict[str, Tensor]]:
    """This rank's micro-batches of the fixed data, in training order."""
    x, y = fixed_data(MICRO_BATCH * world * accumulation * steps)
    rows = [
        global_batch_rows(step, micro, rank, MICRO_BATCH, world, accumulation)
        for step in range(steps)
        for micro in range(accumulation)
    ]
    return [{"x": x[r], "y": y[r]} for r in rows]


def _save(
    out: Path, name: str, objective: ToyObjective, result: Any, extra: dict[str, Any] | None = None
) -> None:
    from reidscale.utils.dist import get_rank

    payload = {
        "weights": full_state(objective.net),
        "teacher": full_state(objective.teacher) if objective.teacher is not None else None,
        "losses": result.losses if result is not None else None,
        "skipped": result.skipped_steps if result is not None else None,
        "snapshots": objective.snapshots,
        **(extra or {}),
    }
    torch.save(payload, out / f"{name}_rank{get_rank()}.pt")


def run_zero(out: Path) -> None:
    from reidscale.engine.trainer import Trainer

    for name, stage, optimizer, clip in ZERO_RUNS:
        torch.manual_seed(0)
        objective = ToyObjective(teacher=True)
        trainer = Trainer(objective, zero_config(stage, optimizer, clip, out, name), out / name)
        data = rank_batches(trainer.rank, trainer.world_size, trainer.accumulation, ZERO_STEPS)
        result = trainer.run(data)
        zeros_teacher = copy.deepcopy(ToyObjective().net).requires_grad_(False)
        for param in zeros_teacher.parameters():
            param.data.zero_()
        ema_update_(zeros_teacher, objective.net, 0.25)  # plain teacher, student partitioned under ZeRO-3
        before = full_state(objective.teacher)  # the run's own teacher, partitioned like the student
        master = ema_master(objective.teacher, objective.net)  # fp32: this rank's slices under ZeRO-3
        ema_update_(objective.teacher, objective.net, 0.5, master)
        mastered = {"before": before, "after": full_state(objective.teacher)}
        extra = {"gathered_ema": full_state(zeros_teacher), "mastered": mastered, "teacher": before}
        _save(out, name, objective, result, extra)  # "teacher": the run's teacher, before the extra update


def run_bf16(out: Path) -> None:
    from reidscale.engine.trainer import Trainer

    torch.manual_seed(0)
    objective = ToyObjective(teacher=True)
    config = zero_config(2, "adamw", "global_norm", out, "z2_bf16")
    config.precision = "bf16"
    trainer = Trainer(objective, config, out / "z2_bf16")
    data = rank_batches(trainer.rank, trainer.world_size, trainer.accumulation, ZERO_STEPS)
    _save(out, "z2_bf16", objective, trainer.run(data))


def run_nan(out: Path) -> None:
    from reidscale.engine.guards import NonFiniteLossError
    from reidscale.engine.trainer import Trainer

    for name, stage, policy in (
        ("nan_skip_z0", 0, "skip"),
        ("nan_skip_z2", 2, "skip"),
        ("nan_stop", 0, "stop"),
    ):
        torch.manual_seed(0)
        objective = ToyObjective()
        objective.nan_step, objective.nan_rank = 2, 1
        config = zero_config(stage, "adamw", "none", out, name)
        config.nan_policy = policy
        trainer = Trainer(objective, config, out / name)
        data = rank_batches(trainer.rank, trainer.world_size, trainer.accumulation, ZERO_STEPS)
        result, error = None, ""
        try:
            result = trainer.run(data)
        except NonFiniteLossError as err:
            error = str(err)
        _save(out, name, objective, result, {"error": error})


def resume_config(stage: int, out: Path, name: str, resume: bool) -> Any:
    from reidscale.engine.config import CheckpointConfig, OptimizerConfig, ScheduleConfig, TrainConfig

    return TrainConfig(
        zero_stage=stage,
        micro_batch=4,
        max_steps=6,
        optimizer=OptimizerConfig(lr=0.02, weight_decay=0.05),
        schedule=ScheduleConfig(warmup_steps=2, momentum_start=0.7, momentum_end=0.95),
        checkpoint=CheckpointConfig(
            dir=str(out / f"ckpt_{name}"), keep_last=2, resume="auto" if resume else None
        ),
        log_every=1,
        seed=7,
    )


def run_resume(out: Path, phase: str) -> None:
    """phase: straight (6 steps), first (z0: SIGTERM on rank 1 after step 2; z3: until_step=3), second."""
    from reidscale.data.sampler import IdentitySampler
    from reidscale.engine.trainer import Trainer

    for name, stage in (("resume_z0", 0), ("resume_z3", 3)):
        torch.manual_seed(0)
        objective = ToyObjective(dropout=0.2, rng_scale=True, teacher=True)
        if phase == "first" and stage == 0:
            objective.sigterm_step, objective.sigterm_rank = 2, 1
        dataset = NoisyDataset(32)
        sampler = IdentitySampler(dataset.pids, batch_size=4, k_schedule=2, seed=3)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)  # 4 batches per rank per epoch
        config = resume_config(
            stage, out / (name if phase == "straight" else f"{name}_split"), name, phase == "second"
        )
        trainer = Trainer(objective, config, out / name)
        until = 3 if phase == "first" and stage == 3 else None
        result = trainer.run(loader, until_step=until)
        extra = {
            "preempted": result.preempted,
            "extra_state": objective.extra_state(),
            "steps": result.steps_done,
        }
        _save(out, f"{name}_{phase}", objective, result, extra)


def main(scenario: str, out: Path) -> None:
    from reidscale.engine.distributed import distributed

    out.mkdir(parents=True, exist_ok=True)
    with distributed():
        if scenario == "zero":
            run_zero(out)
            run_bf16(out)
            run_nan(out)
        elif scenario.startswith("resume_"):
            run_resume(out, scenario.removeprefix("resume_"))
        else:
            raise ValueError(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    args = [arg for arg in sys.argv[1:] if not arg.startswith("--local_rank")]  # the deepspeed launcher's
    main(args[0], Path(args[1]))
