"""What every pre-training method shares: the ``pretrain`` section (method, global batch, periodic
evaluation), the indexed image set of ``pretrain_data`` as training data, and the derived engine fields."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reidscale.config.compose import Section
from reidscale.data.datasets import DATASET_NAMES
from reidscale.data.pretrain_set import PretrainDataConfig, PretrainImageSet, build_pretrain_set
from reidscale.methods.spec import DerivedTrain, EvalPlan, MethodSpec, TrainingData
from reidscale.utils.options import option

logger = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Unsupervised pre-training (``reidscale pretrain``): method, batch and the periodic evaluation."""

    method: str = option(
        "selective", "pre-training method: selective or cion (`reidscale config pretrain` lists the methods)"
    )
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
        from reidscale.methods.registry import check_method

        check_method("pretrain", self.method, "pretrain.method")
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


PRETRAIN_SECTION = Section(
    "pretrain",
    PretrainConfig,
    "unsupervised pre-training: method, batch, periodic evaluation (reidscale pretrain)",
)
INDEXED_IMAGES_SECTION = Section(
    "pretrain_data",
    PretrainDataConfig,
    "pre-training images: manifest, frame subsampling, crop cache, decoding",
)


class ImageBatches:
    """The batches of an indexed image set, ``{"image" [B, 3, H, W], "index" [B], "camid" [B], "pid" [B]}``,
    from a view stream of one view (``shards.CropViewLoader`` or ``DaliShardViewLoader`` with the ``flip``
    recipe); ``sampler`` is the stream's (the engine selects epochs and resumes through it). Unreadable
    images come as the mean colour, each named in a warning."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.sampler = stream, stream.sampler

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.stream:
            for index, problem in batch["unreadable"]:
                logger.warning("pretrain set: image %d replaced by the mean colour: %s", index, problem)
            yield {
                "image": batch["views"][0],
                "index": batch["rows"],
                "camid": batch["camid"],
                "pid": batch["pid"],
            }


def view_stream(config: Any, dataset: PretrainImageSet, sampler: Any, spec: Any) -> Any:
    """This rank's stream of ``spec``'s views of ``dataset`` under ``pretrain_data``'s settings
    (``view_backend``: DALI on the decode device for a shard set, else torch workers; ``num_workers``,
    ``prefetch``), unreadable images kept as the mean colour (the methods need whole batches)."""
    from reidscale.data.pretrain_set import resolve_decode_device
    from reidscale.data.shards.streams import build_view_stream

    data = config.pretrain_data
    device = resolve_decode_device(data.decode_device)
    return build_view_stream(
        dataset.cache, sampler, spec, data.view_backend, device, config.run.seed, data.num_workers,
        data.prefetch, unreadable="mean_colour",
    )  # fmt: skip


def image_stream(config: Any, dataset: PretrainImageSet, sampler: Any) -> ImageBatches:
    """This rank's training batches of ``dataset`` (``view_stream``), each image flipped with
    ``pretrain_data.flip_prob`` per (seed, epoch, image)."""
    from reidscale.data.views.spec import flip_only

    spec = flip_only(config.model.input_size, flip_p=config.pretrain_data.flip_prob)
    return ImageBatches(view_stream(config, dataset, sampler, spec))


def indexed_images(config: Any, rank: int, world_size: int) -> TrainingData:
    """The fixed, indexed image set of ``pretrain_data`` at the input size ``model.img_size``; each rank draws
    ``pretrain.batch_size / world_size`` images per step through ``image_stream``. Facts: ``cameras`` [N],
    ``pids`` [N] (tracklets), ``skipped`` (reader / decode reason → count) and ``skipped_entries`` (the
    skipped records named).

    Raises:
        ValueError: ``pretrain.batch_size`` does not split evenly over the ranks.
    """
    size = config.model.input_size
    dataset, sampler = build_pretrain_set(
        config.pretrain_data,
        size,
        pretrain_micro_batch(config, world_size),
        config.run.seed,
        rank,
        world_size,
        cache_root=Path(config.run.output_dir) / "crop_caches",
    )

    def init_batches(start: int, stop: int, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for first in range(start, stop, batch):
            rows = list(range(first, min(first + batch, stop)))
            yield torch.tensor(rows, dtype=torch.int64), torch.stack([dataset.test_view(i) for i in rows])

    return TrainingData(
        dataset=dataset,
        batch_sampler=sampler,
        num_workers=config.pretrain_data.num_workers,
        loader=image_stream(config, dataset, sampler),
        summary=dataset.summary,
        init_batches=init_batches,
        facts={
            "cameras": dataset.cameras,
            "pids": dataset.pids,
            "skipped": dataset.skipped,
            "skipped_entries": dataset.skipped_entries,
        },
    )


def pretrain_micro_batch(config: Any, world_size: int) -> int:
    """Images per rank per step: ``pretrain.batch_size / world_size`` (ValueError when it does not split)."""
    batch = config.pretrain.batch_size
    if batch % world_size:
        raise ValueError(
            f"pretrain.batch_size ({batch}) must be a multiple of the number of ranks ({world_size})"
        )
    return batch // world_size


def derive_pretrain_train(config: Any, world_size: int, batches_per_epoch: int) -> DerivedTrain:
    """The engine fields every pre-training method derives: this rank's share of ``pretrain.batch_size``,
    no accumulation, and ``pretrain.eval_every_epochs`` in steps."""
    per_rank = "from pretrain.batch_size / number of ranks"
    return DerivedTrain(
        values={
            "micro_batch": pretrain_micro_batch(config, world_size),
            "global_batch": None,
            "grad_accumulation": 1,
            "eval_every": config.pretrain.eval_every_epochs * batches_per_epoch,
        },
        reasons={
            "micro_batch": per_rank,
            "global_batch": "it is pretrain.batch_size",
            "grad_accumulation": "always 1: the batch is the unit of selection and of the bank updates",
            "eval_every": "from pretrain.eval_every_epochs",
        },
    )


def pretrain_eval_plan(config: Any) -> EvalPlan | None:
    """``pretrain.eval_dataset`` at ``pretrain.eval_root`` (None = no evaluation)."""
    pretrain = config.pretrain
    if pretrain.eval_dataset is None:
        return None
    return EvalPlan(pretrain.eval_dataset, pretrain.eval_root, pretrain.flip_test)


def pretrain_until_step(config: Any) -> int | None:
    """``pretrain.until_step``."""
    return config.pretrain.until_step


def pretrain_preflight(config: Any) -> list[str]:
    """What is missing before pre-training starts: ``pretrain_data.path``, and ``pretrain.eval_root`` when
    ``pretrain.eval_dataset`` is set (one line per problem, naming the option and the path)."""
    problems = []
    if not Path(config.pretrain_data.path).exists():
        problems.append(f"pretrain_data.path does not exist: {config.pretrain_data.path}")
    if config.pretrain.eval_dataset is not None and not Path(config.pretrain.eval_root).is_dir():
        problems.append(
            f"pretrain.eval_root is not a folder: {config.pretrain.eval_root} "
            f"(pretrain.eval_dataset={config.pretrain.eval_dataset!r} is evaluated there; null turns it off)"
        )
    return problems


def pretraining_method(
    name: str,
    description: str,
    section: Section,
    build_data: Callable[[Any, int, int], TrainingData],
    build_objective: Callable[[Any, Any, TrainingData], Any],
    transfer: Callable[[Any], tuple[dict, dict | None]],
) -> MethodSpec:
    """A ``reidscale pretrain`` method: the shared ``pretrain`` and ``pretrain_data`` sections, engine fields,
    evaluation plan, ``until_step`` and pre-flight checks, plus the method's own ``section``, data,
    objective and transfer."""
    return MethodSpec(
        name=name,
        command="pretrain",
        description=description,
        sections=(PRETRAIN_SECTION, INDEXED_IMAGES_SECTION, section),
        build_data=build_data,
        build_objective=build_objective,
        derive_train=derive_pretrain_train,
        eval_plan=pretrain_eval_plan,
        transfer=transfer,
        until_step=pretrain_until_step,
        preflight=pretrain_preflight,
    )
