"""``MethodSpec``: what the one training job needs to know about a method, and the values it passes around.

A method (selective contrastive pre-training, BoT fine-tuning, ...) is one spec registered with
``reidscale.methods.registry.register_method``. The job (``reidscale.jobs.train.run_training``) does the
rest the same way for every method: process group, backbone, engine, evaluation, checkpoints, outputs.

The spec's functions receive the command's resolved config root (the sections listed in
``spec.sections`` plus the common ones: ``run``, ``tracking``, ``eval``, ``train``, ``model``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from reidscale.config.compose import Section
from reidscale.objectives.base import InitBatches

#: a state_dict: parameter / buffer name → tensor
StateDict = dict[str, Tensor]


@dataclass
class TrainingData:
    """This rank's training data, as a method's data builder returns it.

    Attributes:
        dataset: the map-style dataset (item = one training sample, e.g. ``{"image", "index", "camid"}``).
        batch_sampler: this rank's batches of dataset indices (``set_epoch(e)`` before each epoch).
        num_workers: DataLoader worker processes.
        summary: one line printed by rank 0 before training (None = nothing).
        init_batches: ``(start, stop, batch) -> iterator of (index [b], images [b, 3, H, W])`` over the
            rows ``[start, stop)`` without augmentation, handed to ``Objective.setup`` (None = not offered).
        facts: what the objective builder needs to know about the data (e.g. ``cameras``, ``num_pids``).
        loader: this rank's batches, when the method streams them itself (an iterable once per epoch with a
            ``sampler`` that has ``set_epoch`` / ``state_dict``, e.g. a view stream); None = the job builds
            ``DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers)``.
    """

    dataset: Any
    batch_sampler: Any
    num_workers: int = 0
    summary: str | None = None
    init_batches: InitBatches | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    loader: Any = None


@dataclass(frozen=True)
class EvalPlan:
    """The benchmark split a run evaluates on: reader name, folder, test-time flip."""

    dataset: str
    root: str
    flip: bool


@dataclass(frozen=True)
class DerivedTrain:
    """``train`` fields a method's job derives (field → value) and what each is derived from."""

    values: dict[str, Any]
    reasons: dict[str, str]


@dataclass(frozen=True)
class MethodSpec:
    """One training method.

    Attributes:
        name: registry key, the value of the command's method option (e.g. ``pretrain.method``).
        command: the command that trains it (``pretrain`` or ``finetune``); it names the run record.
        description: one line for listings.
        sections: config sections this method reads besides the common ones: its own options, its data's,
            its command's (a section shared by several methods is listed by each; the root holds it once).
        build_data: ``(config, rank, world_size) -> TrainingData``: how its training data is built.
        build_objective: ``(config, backbone, data) -> Objective``: how its objective is built.
        derive_train: ``(config, world_size, batches_per_epoch) -> DerivedTrain``: the engine fields it
            sets (ValueError when its batch does not split over the ranks).
        eval_plan: ``config -> EvalPlan | None``: the split evaluated before, during and after training.
        transfer: ``objective -> (backbone state_dict, heads state_dict or None)``, gathered on every rank:
            what it hands to fine-tuning (``backbone.pt``) and keeps beside it (``heads.pt``).
        until_step: ``config -> int | None``: stop early with a checkpoint (to split a run); None = the end.
        preflight: ``config -> list of problems`` (one line each, naming the option) found without building
            anything, e.g. a data folder that does not exist; the job reports them all before it starts.
    """

    name: str
    command: str
    description: str
    sections: tuple[Section, ...]
    build_data: Callable[[Any, int, int], TrainingData]
    build_objective: Callable[[Any, Any, TrainingData], Any]
    derive_train: Callable[[Any, int, int], DerivedTrain]
    eval_plan: Callable[[Any], EvalPlan | None]
    transfer: Callable[[Any], tuple[StateDict, StateDict | None]]
    until_step: Callable[[Any], int | None] = lambda config: None
    preflight: Callable[[Any], list[str]] = lambda config: []
