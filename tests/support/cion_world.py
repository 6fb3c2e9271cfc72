"""Driver of CION's world-size test: the same global batch on 1 rank and on 2 ranks.

``python tests/support/cion_world.py OUT`` (1 process) and ``deepspeed --num_gpus 2
tests/support/cion_world.py OUT`` (2 CPU ranks, gloo) train ``CionDistillation`` over a BatchNorm-free toy
backbone at ZeRO 0 to 3 with global batch 16 and micro-batch 8 (4 identities × K = 2 in epoch 0, 2 × 4 in
epoch 1): one rank accumulates 2 micro-batches per step, two ranks one each. Every micro-batch's loss and
gradient are the same arithmetic either way, and the centre moves by the mean teacher output of the whole
step (all micro-batches, all ranks), so losses, student, teacher and centre must agree. The student's
prototype directions are recorded before training and after every step (frozen during epoch 0). BatchNorm
is left out because its statistics would be those of the micro-batch, which is the same here, but
SyncBatchNorm, the released choice on GPUs, has no CPU (gloo) implementation. Each rank writes
``z<stage>_world<W>_rank<R>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

STAGES = (0, 1, 2, 3)
STEPS, STEPS_PER_EPOCH, MICRO_BATCH, GLOBAL_BATCH = 4, 2, 8, 16
NUM_LOCAL = 2


class ToyBackbone(nn.Module):
    """Conv → GroupNorm → GELU → global average pool → Linear: a backbone without batch statistics."""

    feature_dim = 12

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.GELU())
        self.fc = nn.Linear(8, self.feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


def cion_config() -> Any:
    """The toy's ``CionConfig``: 32 prototypes, hidden 16, bottleneck 8, 2 local views."""
    from reidscale.objectives.cion import CionConfig

    return CionConfig(num_prototypes=32, hidden_dim=16, bottleneck_dim=8, num_local=NUM_LOCAL)


def global_views(step: int) -> list[Tensor]:
    """The step's global batch of views, identity-major inside each view (2 global 16×8, locals 8×4)."""
    generator = torch.Generator().manual_seed(100 + step)
    sizes = [(16, 8)] * 2 + [(8, 4)] * NUM_LOCAL
    return [torch.randn(GLOBAL_BATCH, 3, h, w, generator=generator) for h, w in sizes]


def micro_batches(rank: int, world: int, accumulation: int) -> list[dict[str, Any]]:
    """This rank's micro-batches in training order: micro-batch m of step s on rank r holds rows
    [(m·world + r)·8, +8) of the step's global batch (whole identities: K divides 8)."""
    batches = []
    for step in range(STEPS):
        views = global_views(step)
        k = 2 if step < STEPS_PER_EPOCH else 4
        for micro in range(accumulation):
            start = (micro * world + rank) * MICRO_BATCH
            batches.append({"views": [v[start : start + MICRO_BATCH] for v in views], "images_per_id": k})
    return batches


def train_config(stage: int, out: Path) -> Any:
    """AdamW with the released schedules' shapes (weight decay 0.04 → 0.4, momentum 0.9 → 1), clip 3."""
    from reidscale.engine.config import (
        CheckpointConfig,
        ClipConfig,
        OptimizerConfig,
        ScheduleConfig,
        TrainConfig,
    )

    schedule = ScheduleConfig(
        warmup_steps=1,
        warmup_start_lr=0.001,
        min_lr=1e-4,
        weight_decay_end=0.4,
        momentum_start=0.9,
        momentum_end=1.0,
        temperature_start=0.04,
        temperature_end=0.04,
    )
    return TrainConfig(
        zero_stage=stage,
        micro_batch=MICRO_BATCH,
        global_batch=GLOBAL_BATCH,
        max_steps=STEPS,
        optimizer=OptimizerConfig(name="adamw", lr=0.01, weight_decay=0.04),
        clip=ClipConfig(mode="per_param", value=3.0),
        schedule=schedule,
        checkpoint=CheckpointConfig(dir=str(out / f"ckpt_z{stage}"), keep_last=1),
        log_every=1,
    )


class RecordingCion:
    """Builds the toy ``CionDistillation`` and records the student's prototype directions after each step."""

    def __init__(self) -> None:
        from reidscale.data.sampler import KSchedule
        from reidscale.objectives.cion import CionDistillation

        self.objective = CionDistillation(ToyBackbone(), cion_config(), KSchedule(((0, 2), (1, 4))).k_at)
        self.directions: list[Tensor] = []
        self._after_step = self.objective.after_step
        self.objective.after_step = self.after_step  # type: ignore[method-assign]

    def prototype_directions(self) -> Tensor:
        """The row-normalised prototype matrix [C, bottleneck] (gathered under ZeRO-3: a collective)."""
        from tests.support.engine_toy import full_state

        return torch.nn.functional.normalize(full_state(self.objective.student.head)["prototypes"], dim=-1)

    def after_step(self, step: int, values: dict[str, float]) -> None:
        self._after_step(step, values)
        self.directions.append(self.prototype_directions())


def train_stage(stage: int, out: Path) -> None:
    from reidscale.engine.trainer import Trainer
    from reidscale.objectives.base import TrainingContext
    from tests.support.engine_toy import full_state

    torch.manual_seed(0)
    run = RecordingCion()
    objective = run.objective
    trainer = Trainer(objective, train_config(stage, out), out / f"z{stage}")
    rank, world = trainer.rank, trainer.world_size
    context = TrainingContext(trainer.device, rank=rank, world_size=world, steps_per_epoch=STEPS_PER_EPOCH)
    objective.setup(context)
    run.directions.append(run.prototype_directions())
    result = trainer.run(micro_batches(trainer.rank, trainer.world_size, trainer.accumulation))
    payload = {
        "losses": result.losses,
        "student": full_state(objective.student),
        "teacher": full_state(objective.teacher),
        "center": objective.center.cpu(),
        "directions": run.directions,
    }
    torch.save(payload, out / f"z{stage}_world{trainer.world_size}_rank{trainer.rank}.pt")


def main(out: Path) -> None:
    from reidscale.engine.distributed import distributed

    out.mkdir(parents=True, exist_ok=True)
    with distributed():
        for stage in STAGES:
            train_stage(stage, out)


if __name__ == "__main__":
    main(Path(next(arg for arg in sys.argv[1:] if not arg.startswith("--local_rank"))))
