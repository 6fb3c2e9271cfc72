"""What every fine-tuning method shares: the ``finetune`` section (method, labelled benchmark, identity
P×K batches, augmentations, test-time flip) and its training data, identity batches of the train split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reidscale.config.compose import Section
from reidscale.data.datasets import DATASET_NAMES
from reidscale.data.finetune_set import finetune_train_data
from reidscale.methods.spec import EvalPlan, TrainingData
from reidscale.utils.options import option


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning (``reidscale finetune``): method, data, batches, augmentations, evaluation."""

    method: str = option("bot", "fine-tuning method: bot (`reidscale config finetune` lists the methods)")
    dataset: str = option("market1501", "training benchmark, one of the evaluation readers' dataset names")
    dataset_root: str = option("data", "folder holding the dataset (or its release-named parent)")
    ids_per_batch: int = option(16, "P: identities per global batch (split evenly over the ranks)")
    images_per_id: int = option(4, "K: images per identity in a batch")
    hflip: bool = option(True, "random horizontal flip (p=0.5) during training")
    pad: int = option(10, "zero padding before the random crop back to the input size (0 = no pad/crop)")
    random_erasing: float = option(0.5, "probability of random erasing (0 = off)")
    flip_test: bool = option(False, "average each test feature with that of the mirrored image")

    def __post_init__(self) -> None:
        from reidscale.methods.registry import check_method

        check_method("finetune", self.method, "finetune.method")
        for name, least in {"ids_per_batch": 2, "images_per_id": 1}.items():
            if getattr(self, name) < least:
                raise ValueError(f"finetune.{name} must be >= {least}, got {getattr(self, name)}")
        if self.dataset.lower() not in DATASET_NAMES:
            raise ValueError(f"finetune.dataset must be one of {DATASET_NAMES}, got {self.dataset!r}")
        if self.pad < 0:
            raise ValueError(f"finetune.pad must be >= 0, got {self.pad}")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ValueError(
                f"finetune.random_erasing must be a probability in [0, 1], got {self.random_erasing}"
            )


FINETUNE_SECTION = Section(
    "finetune",
    FinetuneConfig,
    "supervised fine-tuning: method, benchmark, P x K batches (reidscale finetune)",
)


def finetune_micro_batch(config: Any, world_size: int) -> int:
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


def identity_batches(config: Any, rank: int, world_size: int) -> TrainingData:
    """The train split of ``finetune.dataset`` with the BoT augmentations at ``model.img_size``, in this
    rank's P×K batches (P = ``finetune.ids_per_batch`` / world size identities, K = ``images_per_id``).
    Facts: ``num_pids`` (classes of an identity classifier).

    Raises:
        ValueError: ``finetune.ids_per_batch`` does not split evenly over the ranks.
    """
    finetune_micro_batch(config, world_size)  # the split is checked before the data is read
    size = config.model.input_size
    dataset, sampler = finetune_train_data(config.finetune, size, config.run.seed, rank, world_size)
    return TrainingData(dataset=dataset, batch_sampler=sampler, facts={"num_pids": dataset.num_pids})


def finetune_eval_plan(config: Any) -> EvalPlan:
    """The query/gallery of the benchmark trained on."""
    return EvalPlan(config.finetune.dataset, config.finetune.dataset_root, config.finetune.flip_test)


def finetune_preflight(config: Any) -> list[str]:
    """What is missing before fine-tuning starts: the folder ``finetune.dataset_root`` (one line each)."""
    if not Path(config.finetune.dataset_root).is_dir():
        return [f"finetune.dataset_root is not a folder: {config.finetune.dataset_root}"]
    return []
