"""Selective contrastive learning (docs/methods.md#selective-contrastive-learning) as a pre-training method:
the indexed image set (one memory-bank row per image), the ``scl`` section, the objective of
``reidscale.objectives.selective``; it hands the backbone to fine-tuning and keeps its heads beside it."""

from __future__ import annotations

from typing import Any

from reidscale.config.compose import Section
from reidscale.engine.gather import gathered_state_dict
from reidscale.methods.pretraining import indexed_images, pretraining_method
from reidscale.methods.spec import StateDict, TrainingData
from reidscale.models.weights import split_prefix
from reidscale.objectives.selective import SelectiveConfig, SelectiveContrastive


def build_objective(config: Any, backbone: Any, data: TrainingData) -> SelectiveContrastive:
    """The SCL objective over the data's rows (cameras for the camera term, tracklets for a diagnostic)."""
    return SelectiveContrastive(
        backbone, config.scl, data.facts["cameras"], config.run.seed, data.facts["pids"]
    )


def transfer(objective: SelectiveContrastive) -> tuple[StateDict, StateDict | None]:
    """(backbone weights, the global and stripe heads' weights)."""
    return split_prefix(gathered_state_dict(objective.net), "backbone.")


SELECTIVE = pretraining_method(
    name="selective",
    description="selective contrastive learning: three memory banks, selected positives, hard negatives",
    section=Section(
        "scl",
        SelectiveConfig,
        "selective contrastive learning: heads, memory banks, selection, loss (docs/methods.md)",
    ),
    build_data=indexed_images,
    build_objective=build_objective,
    transfer=transfer,
)
