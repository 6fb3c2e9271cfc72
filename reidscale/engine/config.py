"""``TrainConfig``: the typed training-engine settings every objective shares (one source of truth).

The DeepSpeed JSON (``deepspeed_config.render_deepspeed_config``), the optimizer, the schedules, the
guards and the checkpoints are all derived from it. ``check_train_config`` validates a config (and, with a
world size, the batch arithmetic) and raises ValueError naming the field and what was expected; the checks
that need neither the world size nor a GPU (``check_field_values``) already run when a TrainConfig is built.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from reidscale.config.loader import config_to_dict
from reidscale.utils.options import option

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
CLIP_MODES: tuple[str, ...] = ("none", "global_norm", "per_param")
NAN_POLICIES: tuple[str, ...] = ("skip", "stop")


@dataclass
class OptimizerConfig:
    """The torch optimizer handed to DeepSpeed (no DeepSpeed JIT-built optimizers)."""

    name: Literal["adamw", "sgd"] = option("adamw", "optimizer: adamw or sgd")
    lr: float = option(3.5e-4, "peak learning rate (reached at the end of the warm-up)")
    weight_decay: float = option(5e-4, "weight decay at step 0 (biases and norms never decay)")
    betas: list[float] = option(doc="AdamW betas (two values)", factory=lambda: [0.9, 0.999])
    eps: float = option(1e-8, "AdamW epsilon")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(False, "SGD Nesterov momentum")


@dataclass
class ClipConfig:
    """Gradient clipping."""

    mode: Literal["none", "global_norm", "per_param"] = option(
        "none", "none, global_norm (DeepSpeed gradient_clipping) or per_param (each tensor's norm, as DINO)"
    )
    value: float = option(1.0, "maximum gradient norm (global, or per parameter tensor)")


@dataclass
class ScheduleConfig:
    """Per-iteration schedules (pure functions of the optimizer step; see ``schedules``)."""

    warmup_steps: int = option(0, "linear lr warm-up from warmup_start_lr to optimizer.lr over these steps")
    warmup_epochs: float = option(
        0.0,
        "the lr warm-up in epochs instead (> 0: round(epochs × optimizer steps per epoch) steps, counted "
        "from the training data; set one of warmup_steps and warmup_epochs)",
    )
    warmup_start_lr: float = option(0.0, "learning rate at step 0 when warmup_steps > 0")
    min_lr: float = option(0.0, "learning rate at the last step (cosine decay after the warm-up)")
    weight_decay_end: float | None = option(
        None, "weight decay at the last step (cosine from optimizer.weight_decay); null = constant"
    )
    momentum_start: float = option(0.996, "EMA momentum at step 0 (value objectives read, e.g. a teacher)")
    momentum_end: float = option(1.0, "EMA momentum at the last step (cosine from momentum_start)")
    temperature_start: float = option(0.04, "temperature at step 0 (value objectives read)")
    temperature_end: float = option(0.04, "temperature after temperature_warmup_steps (then constant)")
    temperature_warmup_steps: int = option(0, "linear temperature warm-up length in steps")


@dataclass
class CheckpointConfig:
    """Checkpoints (DeepSpeed save/load plus client_state), kept atomic and last-K."""

    dir: str | None = option(None, "checkpoint folder; null = <run folder>/checkpoints")
    every: int = option(0, "save every this many optimizer steps (0 = only at the end and on SIGTERM)")
    keep_last: int = option(3, "complete checkpoints kept (older ones are deleted)")
    resume: str | None = option(None, "resume from: null (fresh), 'auto' (latest in dir if any) or a path")
    stop_grace_s: float = option(
        60.0,
        "after SIGTERM / SIGINT: seconds to reach the next step boundary and save a checkpoint; past it, or "
        "on a second signal, the run stops at once (0 = no limit)",
    )


@dataclass
class TrainConfig:
    """The training engine's settings."""

    zero_stage: int = option(0, "DeepSpeed ZeRO stage 0-3")
    precision: Literal["fp32", "bf16", "fp16"] = option("fp32", "fp32, bf16, or fp16 (GPU only)")
    micro_batch: int | None = option(
        None,
        "images per rank per forward/backward; the training jobs derive it from their batch settings "
        "(leave it null there); required when the engine is driven directly",
    )
    global_batch: int | None = option(
        None, "images per optimizer step over all ranks; null = micro_batch × world × grad_accumulation"
    )
    grad_accumulation: int | None = option(
        None, "micro-batches per optimizer step; null = global_batch / (micro_batch × world), else 1"
    )
    max_steps: int | None = option(None, "optimizer steps to train; null = epochs × steps per epoch")
    epochs: int | None = option(None, "passes over the data (when max_steps is null)")
    optimizer: OptimizerConfig = option(doc="optimizer", factory=OptimizerConfig)
    clip: ClipConfig = option(doc="gradient clipping", factory=ClipConfig)
    schedule: ScheduleConfig = option(doc="per-iteration schedules", factory=ScheduleConfig)
    nan_policy: Literal["skip", "stop"] = option(
        "stop", "on a non-finite loss: skip the step on every rank, or save a checkpoint and stop"
    )
    checkpoint: CheckpointConfig = option(doc="checkpoints", factory=CheckpointConfig)
    log_every: int = option(10, "log throughput and loss parts every this many steps")
    eval_every: int | None = option(
        None, "evaluate every this many steps (null or 0 = only at the end); pretrain derives it from epochs"
    )
    seed: int = option(0, "base random seed; rank r seeds python/numpy/torch with seed + r")

    def __post_init__(self) -> None:
        """Refuse a bad field value at construction (loading a config), not when the Trainer starts."""
        check_field_values(self)


def _cuda_available() -> bool:
    import torch  # here, so that the config schema can import this module without torch

    return torch.cuda.is_available()


def _require(condition: bool, field: str, expected: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"train.{field} must be {expected}, got {value!r}")


def _check_optim_and_clip(config: TrainConfig) -> None:
    optim = config.optimizer
    _require(optim.name in OPTIMIZERS, "optimizer.name", f"one of {OPTIMIZERS}", optim.name)
    _require(optim.lr > 0, "optimizer.lr", "> 0", optim.lr)
    _require(optim.weight_decay >= 0, "optimizer.weight_decay", ">= 0", optim.weight_decay)
    betas = tuple(optim.betas)
    _require(
        len(betas) == 2 and all(0 <= b < 1 for b in betas),
        "optimizer.betas",
        "two values in [0, 1)",
        optim.betas,
    )
    _require(0 <= optim.momentum < 1, "optimizer.momentum", "in [0, 1)", optim.momentum)
    _require(config.clip.mode in CLIP_MODES, "clip.mode", f"one of {CLIP_MODES}", config.clip.mode)
    _require(config.clip.value > 0, "clip.value", "> 0", config.clip.value)


def _check_schedule(config: TrainConfig) -> None:
    sched = config.schedule
    _require(sched.warmup_steps >= 0, "schedule.warmup_steps", ">= 0", sched.warmup_steps)
    _require(sched.warmup_epochs >= 0, "schedule.warmup_epochs", ">= 0", sched.warmup_epochs)
    _require(
        not (sched.warmup_epochs and sched.warmup_steps),
        "schedule.warmup_epochs",
        "0 when schedule.warmup_steps is set (one warm-up length)",
        sched.warmup_epochs,
    )
    _require(sched.warmup_start_lr >= 0, "schedule.warmup_start_lr", ">= 0", sched.warmup_start_lr)
    _require(sched.min_lr >= 0, "schedule.min_lr", ">= 0", sched.min_lr)
    _require(
        sched.weight_decay_end is None or sched.weight_decay_end >= 0,
        "schedule.weight_decay_end",
        ">= 0 or null",
        sched.weight_decay_end,
    )
    for name in ("momentum_start", "momentum_end"):
        _require(0 <= getattr(sched, name) <= 1, f"schedule.{name}", "in [0, 1]", getattr(sched, name))
    for name in ("temperature_start", "temperature_end"):
        _require(getattr(sched, name) > 0, f"schedule.{name}", "> 0", getattr(sched, name))
    _require(
        sched.temperature_warmup_steps >= 0,
        "schedule.temperature_warmup_steps",
        ">= 0",
        sched.temperature_warmup_steps,
    )


def check_field_values(config: TrainConfig) -> TrainConfig:
    """Validate the fields that need neither the world size nor a GPU (ValueError naming the field).

    ``TrainConfig`` runs it when it is built, so a bad value is refused when the config is loaded.
    """
    _require(config.zero_stage in (0, 1, 2, 3), "zero_stage", "0, 1, 2 or 3", config.zero_stage)
    _require(config.precision in PRECISIONS, "precision", f"one of {PRECISIONS}", config.precision)
    _require(config.micro_batch is None or config.micro_batch >= 1, "micro_batch", ">= 1", config.micro_batch)
    _require(
        config.global_batch is None or config.global_batch >= 1,
        "global_batch",
        ">= 1 or null",
        config.global_batch,
    )
    _require(
        config.grad_accumulation is None or config.grad_accumulation >= 1,
        "grad_accumulation",
        ">= 1 or null",
        config.grad_accumulation,
    )
    _require(config.max_steps is None or config.max_steps >= 1, "max_steps", ">= 1 or null", config.max_steps)
    _require(config.epochs is None or config.epochs >= 1, "epochs", ">= 1 or null", config.epochs)
    _check_optim_and_clip(config)
    _check_schedule(config)
    _require(config.nan_policy in NAN_POLICIES, "nan_policy", f"one of {NAN_POLICIES}", config.nan_policy)
    _require(config.checkpoint.every >= 0, "checkpoint.every", ">= 0", config.checkpoint.every)
    _require(config.checkpoint.keep_last >= 1, "checkpoint.keep_last", ">= 1", config.checkpoint.keep_last)
    _require(
        config.checkpoint.stop_grace_s >= 0, "checkpoint.stop_grace_s", ">= 0", config.checkpoint.stop_grace_s
    )
    _require(config.log_every >= 1, "log_every", ">= 1", config.log_every)
    _require(
        config.eval_every is None or config.eval_every >= 0, "eval_every", ">= 0 or null", config.eval_every
    )
    return config


def check_train_config(config: TrainConfig, world_size: int | None = None) -> TrainConfig:
    """Validate ``config`` (ValueError naming the field); with ``world_size``, also the batch arithmetic.

    Besides ``check_field_values`` (repeated: a field may have been changed after construction): fp16
    needs a GPU, ``micro_batch`` must be set (the jobs derive it), ``max_steps`` or ``epochs`` must be set.
    """
    check_field_values(config)
    if config.precision == "fp16" and not _cuda_available():
        raise ValueError(
            "train.precision='fp16' needs a CUDA GPU (DeepSpeed refuses fp16 on CPU); use bf16 or fp32"
        )
    if config.micro_batch is None:
        raise ValueError(
            "train.micro_batch is null: the training jobs derive it; set it when driving the engine directly"
        )
    if config.max_steps is None and config.epochs is None:
        raise ValueError("train.max_steps and train.epochs are both null: set one of them")
    if world_size is not None:
        grad_accumulation(config, world_size)
    return config


def grad_accumulation(config: TrainConfig, world_size: int) -> int:
    """Micro-batches per optimizer step: global_batch / (micro_batch · world_size) or the explicit value."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if config.micro_batch is None:
        raise ValueError("train.micro_batch is null: the training jobs derive it; set it to drive the engine")
    per_pass = config.micro_batch * world_size
    if config.global_batch is None:
        return 1 if config.grad_accumulation is None else config.grad_accumulation
    if config.global_batch % per_pass:
        raise ValueError(
            f"train.global_batch={config.global_batch} must be a multiple of micro_batch × world size = "
            f"{config.micro_batch} × {world_size} = {per_pass}"
        )
    steps = config.global_batch // per_pass
    if config.grad_accumulation is not None and config.grad_accumulation != steps:
        raise ValueError(
            f"train.grad_accumulation={config.grad_accumulation} contradicts train.global_batch="
            f"{config.global_batch} = micro_batch {config.micro_batch} × world {world_size} × {steps}"
        )
    return steps


def plain_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as JSON-like nested dicts (tuples become lists), for logs and checkpoints."""
    return json.loads(json.dumps(config_to_dict(config)))


def with_derived_fields(
    config: TrainConfig, derived: dict[str, Any], command: str, reasons: dict[str, str]
) -> TrainConfig:
    """``config`` with the fields a job derives (``derived``: field → value) filled in.

    Raises:
        ValueError: the user set one of them (it would be silently replaced): names the field, the job
            and what it is derived from (``reasons``: field → "from ...").
    """
    for name in derived:
        if getattr(config, name) is not None:
            raise ValueError(
                f"train.{name} is set to {getattr(config, name)!r}, but {command} derives it "
                f"({reasons.get(name, 'from its own settings')}): remove it from the config"
            )
    return dataclasses.replace(config, **derived)
