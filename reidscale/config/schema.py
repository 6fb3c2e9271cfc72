"""The config tree every reidscale command shares. Later subsystems add their own sections here.

YAML files under ``configs/`` and ``--section.key VALUE`` overrides fill it (see ``loader``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reidscale.data.pretrain_set import PretrainDataConfig
from reidscale.engine.config import TrainConfig
from reidscale.export import ExportConfig
from reidscale.jobs.pretrain_config import PretrainConfig
from reidscale.models.config import ModelConfig
from reidscale.objectives.finetune import FinetuneConfig
from reidscale.objectives.selective.config import SelectiveConfig
from reidscale.utils.options import option


@dataclass
class RunConfig:
    """Identity and location of a run."""

    name: str = option("reidscale", "run name: the output folder name and the tracker run name")
    output_dir: str = option(
        "runs", "parent folder of training run folders (<output_dir>/<name>); evaluate writes beside --output"
    )
    seed: int = option(0, "random seed for everything the run draws")


@dataclass
class WandbConfig:
    """Weights & Biases settings (offline unless the user opts in)."""

    project: str = option("reidscale", "wandb project")
    entity: str | None = option(None, "wandb entity (team or user); null = the account default")
    name: str | None = option(None, "wandb run name; null = run.name")
    group: str | None = option(None, "wandb group, e.g. to gather the ranks or the sweeps of one experiment")
    tags: list[str] = option(doc="wandb tags", factory=list)
    mode: Literal["online", "offline", "disabled"] | None = option(
        None, "null = $WANDB_MODE if set, else online when $WANDB_API_KEY is set, else offline"
    )


@dataclass
class TrackingConfig:
    """Which experiment trackers receive metrics; only global rank 0 logs."""

    backends: list[Literal["console", "jsonl", "wandb"]] = option(
        doc="tracker backends to log to (any of console, jsonl, wandb)", factory=lambda: ["console", "jsonl"]
    )
    jsonl_path: str | None = option(
        None, "jsonl log file; null = metrics.jsonl in the run folder (evaluate: <output stem>.metrics.jsonl)"
    )
    progress: bool = option(True, "show progress bars on long work (console backend)")
    wandb: WandbConfig = option(doc="wandb backend settings", factory=WandbConfig)


@dataclass
class RerankConfig:
    """k-reciprocal re-ranking (Zhong et al. 2017)."""

    enabled: bool = option(False, "re-rank the query-gallery distances before computing metrics")
    k1: int = option(20, "k of the k-reciprocal neighbour sets")
    k2: int = option(6, "neighbours averaged in the local query expansion (1 = none)")
    lambda_value: float = option(0.3, "weight of the original distance in the final distance")


@dataclass
class EvalConfig:
    """ReID evaluation (docs/methods.md): distances, rank metrics, kNN search, re-ranking."""

    metric: Literal["cosine", "euclidean"] = option(
        "cosine", "distance between embeddings: cosine = 1-cos, euclidean = squared L2"
    )
    normalize: bool = option(True, "L2-normalise the features before computing distances")
    max_rank: int = option(50, "largest CMC rank reported")
    query_chunk: int | None = option(None, "queries per chunk; null = chosen from memory_budget_mb")
    memory_budget_mb: int = option(1024, "working memory allowed for one chunk of query-gallery distances")
    knn_backend: Literal["auto", "faiss", "torch"] = option(
        "auto", "nearest-neighbour search: faiss (GPU index when faiss sees a GPU), chunked torch, or auto"
    )
    device: str = option(
        "auto", "device for distance computation: auto (cuda when available), cpu, cuda, cuda:N"
    )
    rerank: RerankConfig = option(doc="k-reciprocal re-ranking", factory=RerankConfig)
    camera_penalty: float = option(
        0.0,
        "test-time camera term: added to the distance of same-camera query-gallery pairs (after any "
        "re-ranking); 0 = off, the standard protocol. Results record the value used",
    )
    num_visualize: int = option(
        0, "queries drawn in the rank-list PNG (needs image paths in the features file)"
    )


@dataclass
class Config:
    """Root of the config tree."""

    run: RunConfig = option(doc="run identity and output location", factory=RunConfig)
    tracking: TrackingConfig = option(doc="experiment trackers", factory=TrackingConfig)
    eval: EvalConfig = option(doc="evaluation", factory=EvalConfig)
    train: TrainConfig = option(
        doc="training engine (DeepSpeed ZeRO, optimizer, schedules, checkpoints)", factory=TrainConfig
    )
    model: ModelConfig = option(
        doc="backbone to build (reidscale.models.list_backbones() names them)", factory=ModelConfig
    )
    export: ExportConfig = option(doc="reidscale export (state_dict + checked ONNX)", factory=ExportConfig)
    finetune: FinetuneConfig = option(
        doc="supervised BoT-style fine-tuning (reidscale finetune)", factory=FinetuneConfig
    )
    pretrain: PretrainConfig = option(
        doc="unsupervised pre-training: method, batch, periodic evaluation (reidscale pretrain)",
        factory=PretrainConfig,
    )
    pretrain_data: PretrainDataConfig = option(
        doc="pre-training images: manifest, frame subsampling, crop cache, decoding",
        factory=PretrainDataConfig,
    )
    scl: SelectiveConfig = option(
        doc="selective contrastive learning: heads, memory banks, selection, loss (docs/methods.md)",
        factory=SelectiveConfig,
    )
