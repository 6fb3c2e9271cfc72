"""The DeepSpeed JSON, rendered from ``TrainConfig`` and the world size (the one source of truth).

The optimizer and the schedules are not in the JSON: the engine hands DeepSpeed a torch optimizer built
from the param groups and sets lr / weight decay itself every iteration (pure functions of the step).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reidscale.engine.config import TrainConfig, check_train_config, grad_accumulation
from reidscale.utils.io import atomic_write_json


def render_deepspeed_config(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """The ``config=`` dict for ``deepspeed.initialize``.

    train_batch_size = micro_batch · world_size · gradient_accumulation_steps; gradient_clipping is set
    for ``clip.mode == "global_norm"`` only (per-parameter clipping is done by the engine).
    """
    check_train_config(config, world_size)
    accumulation = grad_accumulation(config, world_size)
    zero: dict[str, Any] = {"stage": config.zero_stage}
    if config.zero_stage >= 2:
        zero.update({"overlap_comm": False, "contiguous_gradients": True})
    if config.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    rendered: dict[str, Any] = {
        "train_batch_size": config.micro_batch * world_size * accumulation,
        "train_micro_batch_size_per_gpu": config.micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": config.clip.value if config.clip.mode == "global_norm" else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": config.precision == "bf16"},
        "fp16": {"enabled": config.precision == "fp16"},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if config.precision == "fp16":
        rendered["fp16"].update({"loss_scale": 0, "initial_scale_power": 16})
    return rendered


def write_deepspeed_config(config: TrainConfig, world_size: int, path: str | os.PathLike) -> Path:
    """Write the rendered JSON to ``path`` atomically (examples under ``launch/``); returns the path."""
    return atomic_write_json(path, render_deepspeed_config(config, world_size))
