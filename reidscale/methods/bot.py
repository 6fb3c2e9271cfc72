"""BoT supervised fine-tuning (Luo et al. 2019; docs/methods.md#bot-supervised-fine-tuning) as a method of
``reidscale finetune``: identity P×K batches of a labelled benchmark's train split, the BNNeck objective,
evaluation on the same benchmark's query/gallery; the fine-tuned backbone is its output."""

from __future__ import annotations

from typing import Any

from reidscale.config.compose import Section
from reidscale.engine.gather import gathered_state_dict
from reidscale.methods.spec import DerivedTrain, EvalPlan, MethodSpec, StateDict, TrainingData
from reidscale.objectives.finetune import FinetuneConfig, FinetuneObjective, finetune_train_data

FINETUNE_SECTION = Section(
    "finetune", FinetuneConfig, "supervised BoT-style fine-tuning (reidscale finetune)"
)


def identity_batches(config: Any, rank: int, world_size: int) -> TrainingData:
    """The train split of ``finetune.dataset`` with the BoT augmentations in this rank's P×K batches
    (P = ``finetune.ids_per_batch`` / world size identities, K = ``finetune.images_per_id`` images each).
    Facts: ``num_pids`` (classes of the identity classifier).

    Raises:
        ValueError: ``finetune.ids_per_batch`` does not split evenly over the ranks.
    """
    bot_micro_batch(config, world_size)  # checks the split before reading the data
    dataset, sampler = finetune_train_data(config.finetune, config.run.seed, rank, world_size)
    return TrainingData(dataset=dataset, batch_sampler=sampler, facts={"num_pids": dataset.num_pids})


def bot_micro_batch(config: Any, world_size: int) -> int:
    """This rank's P×K batch: ``finetune.ids_per_batch / world_size × finetune.images_per_id`` images.

    Raises:
        ValueError: ``finetune.ids_per_batch`` does not split evenly over the ranks.
    """
    ids = config.finetune.ids_per_batch
    if ids % world_size:
        raise ValueError(
            f"finetune.ids_per_batch ({ids}) must be a multiple of the number of ranks ({world_size})"
        )
    return ids // world_size * config.finetune.images_per_id


def derive_train(config: Any, world_size: int, batches_per_epoch: int) -> DerivedTrain:
    """This rank's P×K batch as the micro-batch, no accumulation (the P×K batch is the unit of triplet
    mining and of the BatchNorm statistics); ``train.eval_every`` stays the user's."""
    return DerivedTrain(
        values={
            "micro_batch": bot_micro_batch(config, world_size),
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
    """BNNeck + identity classifier over ``num_pids`` classes, with the ``finetune`` loss settings."""
    return FinetuneObjective.from_config(backbone, data.facts["num_pids"], config.finetune)


def eval_plan(config: Any) -> EvalPlan:
    """The query/gallery of the benchmark trained on."""
    return EvalPlan(config.finetune.dataset, config.finetune.dataset_root, config.finetune.flip_test)


def transfer(objective: FinetuneObjective) -> tuple[StateDict, StateDict | None]:
    """(the fine-tuned backbone's weights, no heads: the classifier's classes are the training set's)."""
    return gathered_state_dict(objective.feature_model()), None


BOT = MethodSpec(
    name="bot",
    command="finetune",
    description="BoT: BNNeck, label-smoothed cross-entropy + batch-hard triplet on P x K identity batches",
    sections=(FINETUNE_SECTION,),
    build_data=identity_batches,
    build_objective=build_objective,
    derive_train=derive_train,
    eval_plan=eval_plan,
    transfer=transfer,
)
