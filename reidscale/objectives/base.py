"""The objective interface: what the training engine asks of every pre-training or fine-tuning method.

An objective is an ``nn.Module`` that owns everything trainable (backbone, heads) and everything a method
keeps between steps (memory banks, an EMA teacher, centring vectors). The engine wraps it with DeepSpeed,
feeds it batches, steps the optimizer and calls the hooks below; it knows nothing about the method.

Once, on every rank, after the engine has placed the objective on its device and before training (and
before a checkpoint's ``load_extra_state``)::

    objective.setup(context)                          # banks, queues, teachers: see TrainingContext

Per step, on every rank::

    objective.before_step(step, schedule_values)     # lr / wd / momentum / temperature of this iteration
    out = engine(batch)                              # = objective.forward(batch) -> StepOutput
    engine.backward(out.loss); engine.step()         # skipped (or the run stopped) on a non-finite loss
    objective.after_step(step, schedule_values)      # e.g. EMA teacher update, memory-bank update

``extra_state`` / ``load_extra_state`` carry the non-parameter state into and out of checkpoints
(DeepSpeed ``client_state``); parameters and buffers of registered submodules travel with the model
weights already. ``feature_model`` is what ``reidscale extract`` / ``export`` and evaluation use (the
teacher where there is one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class StepOutput:
    """What ``Objective.forward`` returns.

    Attributes:
        loss: scalar tensor to back-propagate (the sum of the weighted parts).
        parts: name → scalar tensor, the loss parts as logged (detached by the engine before logging).
        num_images: images this rank consumed in the step (source crops; for throughput).
    """

    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    num_images: int = 0


#: ``init_batches(start, stop, batch)``: ``(index [b] int64, images [b, 3, H, W])`` over rows [start, stop)
InitBatches = Callable[[int, int, int], Iterator[tuple[Tensor, Tensor]]]


@dataclass
class TrainingContext:
    """What ``Objective.setup`` learns about the run it is part of.

    Attributes:
        device: where the engine placed the objective's parameters.
        rank, world_size: this process's place in the job.
        steps_per_epoch: optimizer steps per pass over the training data (for schedules counted in epochs).
        resuming: True when a checkpoint will restore ``extra_state`` right after: build the state's
            containers, but do not fill them.
        init_batches: ``init_batches(start, stop, batch)`` iterates ``(index [b] int64, images [b, 3, H, W])``
            over the training rows ``[start, stop)`` without augmentation, e.g. to fill a memory bank.
        report: prints one line on rank 0 (and nothing elsewhere).
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    steps_per_epoch: int = 1
    resuming: bool = False
    init_batches: InitBatches | None = None
    report: Callable[[str], None] = print


class Objective(nn.Module):
    """Base class of training objectives (see the module docstring for the engine's calling protocol)."""

    #: name used in logs and checkpoints
    name: str = "objective"
    #: True when ``extra_state`` differs between ranks by design (e.g. a row-sharded memory bank): the
    #: engine then stores it in each rank's own checkpoint file without comparing the ranks' copies
    extra_state_per_rank: bool = False

    def forward(self, batch: Any) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch) -> StepOutput")

    def setup(self, context: TrainingContext) -> None:
        """Build what depends on the run (memory banks, queues, teachers) once the device is known; see
        :class:`TrainingContext`. Default: nothing to build."""

    def before_step(self, step: int, schedule_values: dict[str, float]) -> None:
        """Called before the forward pass of iteration ``step`` with this iteration's schedule values."""

    def after_step(self, step: int, schedule_values: dict[str, float]) -> None:
        """Called after the optimizer step of iteration ``step`` (also on ranks without data changes)."""

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (banks, centres, counters); tensors are fine. Default: none."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} has no extra state, got keys {sorted(state)}")

    def feature_model(self) -> nn.Module:
        """The module that maps images [B, 3, H, W] to features [B, D] for evaluation and export."""
        raise NotImplementedError(f"{type(self).__name__} must implement feature_model()")


def no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    """True for parameters that take no weight decay: biases and normalisation weights (ndim ≤ 1),
    and anything named like a positional embedding, class token or BNNeck bias."""
    lowered = name.lower()
    return (
        param.ndim <= 1
        or lowered.endswith(".bias")
        or any(key in lowered for key in ("pos_embed", "cls_token", "dist_token"))
    )
