"""The ``pretrain`` config section: which method, the global batch and the periodic evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reidscale.data.datasets import DATASET_NAMES
from reidscale.utils.options import option


@dataclass
class PretrainConfig:
    """Unsupervised pre-training (``reidscale pretrain``): method, batch and the periodic evaluation."""

    method: Literal["selective"] = option("selective", "pre-training objective (selective contrastive)")
    batch_size: int = option(64, "images per global step, split evenly over the ranks")
    eval_dataset: str | None = option(
        "market1501", "benchmark reader of the evaluation split (null = no evaluation)"
    )
    eval_root: str = option(
        "data/synth_demo/market", "folder of the Market-format query/gallery evaluated during training"
    )
    eval_every_epochs: int = option(1, "evaluate every E epochs (0 = only before and after training)")
    flip_test: bool = option(False, "average each test feature with that of the mirrored image")
    until_step: int | None = option(
        None,
        "stop after this many steps of the run's schedule with a checkpoint (to split a run over "
        "time-limited jobs; resume with train.checkpoint.resume=auto); null = train to the end",
    )

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError(f"pretrain.batch_size must be >= 2, got {self.batch_size}")
        if self.until_step is not None and self.until_step < 1:
            raise ValueError(f"pretrain.until_step must be >= 1 or null, got {self.until_step}")
        if self.eval_every_epochs < 0:
            raise ValueError(f"pretrain.eval_every_epochs must be >= 0, got {self.eval_every_epochs}")
        if self.eval_dataset is not None and self.eval_dataset.lower() not in DATASET_NAMES:
            raise ValueError(
                f"pretrain.eval_dataset must be one of {DATASET_NAMES} or null, got {self.eval_dataset!r}"
            )
