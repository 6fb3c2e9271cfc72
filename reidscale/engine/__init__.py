"""The training engine: DeepSpeed ZeRO 0-3 driving any ``reidscale.objectives.Objective``.

One typed config (``TrainConfig``) renders the DeepSpeed JSON, builds the optimizer and the per-iteration
schedules; ``Trainer`` runs the step protocol of ``objectives.base`` with the non-finite loss guard,
atomic keep-last-K checkpoints that resume exactly, SIGTERM handling and throughput tracking::

    from reidscale.engine import Trainer, TrainConfig, distributed

    with distributed():                      # rank/world from deepspeed, torchrun, accelerate or srun
        config = TrainConfig(micro_batch=64, max_steps=1000)
        result = Trainer(objective, config, run_dir, tracker=tracker).run(loader)
"""

from reidscale.engine.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from reidscale.engine.clipping import clip_engine_per_param_, clip_per_param_
from reidscale.engine.config import (
    CheckpointConfig,
    ClipConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    check_train_config,
    grad_accumulation,
)
from reidscale.engine.deepspeed_config import render_deepspeed_config, write_deepspeed_config
from reidscale.engine.distributed import DistInfo, distributed, setup, teardown
from reidscale.engine.guards import NonFiniteLossError, NonFiniteReport, check_finite
from reidscale.engine.param_groups import apply_schedule, build_optimizer, build_param_groups
from reidscale.engine.preemption import PreemptionFlag
from reidscale.engine.schedules import linear_warmup, schedule_values, warmup_cosine
from reidscale.engine.throughput import StepTimer, peak_memory_mb
from reidscale.engine.trainer import Trainer, TrainResult, move_batch, seed_everything
from reidscale.models.ema import ema_master, ema_update_

__all__ = [
    "CheckpointConfig",
    "ClipConfig",
    "DistInfo",
    "NonFiniteLossError",
    "NonFiniteReport",
    "OptimizerConfig",
    "PreemptionFlag",
    "ScheduleConfig",
    "StepTimer",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "apply_schedule",
    "build_optimizer",
    "build_param_groups",
    "check_finite",
    "check_train_config",
    "clip_engine_per_param_",
    "clip_per_param_",
    "distributed",
    "ema_master",
    "ema_update_",
    "grad_accumulation",
    "linear_warmup",
    "load_checkpoint",
    "move_batch",
    "peak_memory_mb",
    "render_deepspeed_config",
    "resolve_checkpoint",
    "save_checkpoint",
    "schedule_values",
    "seed_everything",
    "setup",
    "teardown",
    "warmup_cosine",
    "write_deepspeed_config",
]
