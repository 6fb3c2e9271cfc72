"""BoT supervised fine-tuning (Luo et al. 2019; docs/methods.md#bot-supervised-fine-tuning) as a method of
``reidscale finetune``: identity P×K batches of a labelled benchmark's train split, the BNNeck objective
with the ``bot`` loss settings, evaluation on the same benchmark's query/gallery; the fine-tuned backbone
is its output."""

from __future__ import annotations

from typing import Any

from reidscale.config.compose import Section
from reidscale.engine.gather import gathered_state_dict
from reidscale.methods.finetuning import (
    FINETUNE_SECTION,
    finetune_eval_plan,
    finetune_micro_batch,
    finetune_preflight,
    identity_batches,
)
from reidscale.methods.spec import DerivedTrain, MethodSpec, StateDict, TrainingData
from reidscale.objectives.finetune import BotConfig, FinetuneObjective


def derive_train(config: Any, world_size: int, batches_per_epoch: int) -> DerivedTrain:
    """This rank's P×K batch as the micro-batch, no accumulation (the P×K batch is the unit of triplet
    mining and of the BatchNorm statistics); ``train.eval_every`` stays the user's."""
    return DerivedTrain(
        values={
            "micro_batch": finetune_micro_batch(config, world_size),
            "global_batch": None,
            "grad_accumulation": 1,
        },
        reasons={
            "micro_batch": "from finetune.ids_per_batch / number of ranks x finetune.images_per_id",
            "global_batch": "it is finetune.ids_per_batch x finetune.images_per_id",
            "grad_accumulation": "always 1: the P x K batch is the unit of triplet mining and BatchNorm",
        },
    )


def build_objective(config: Any, backbone: Any, data: TrainingData) -> FinetuneObjective:
    """BNNeck + identity classifier over ``num_pids`` classes, with the ``bot`` loss settings."""
    return FinetuneObjective.from_config(backbone, data.facts["num_pids"], config.bot)


def transfer(objective: FinetuneObjective) -> tuple[StateDict, StateDict | None]:
    """(the fine-tuned backbone's weights, no heads: the classifier's classes are the training set's)."""
    return gathered_state_dict(objective.feature_model()), None


BOT = MethodSpec(
    name="bot",
    command="finetune",
    description="BoT: BNNeck, label-smoothed cross-entropy + batch-hard triplet on P x K identity batches",
    sections=(FINETUNE_SECTION, Section("bot", BotConfig, "BoT losses: cross-entropy and triplet settings")),
    build_data=identity_batches,
    build_objective=build_objective,
    derive_train=derive_train,
    eval_plan=finetune_eval_plan,
    transfer=transfer,
    preflight=finetune_preflight,
)
