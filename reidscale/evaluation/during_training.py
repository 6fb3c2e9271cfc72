"""``SplitEvaluator``: the evaluation a training run does on a benchmark's query/gallery split.

The engine calls it as ``evaluator(objective, step) -> {name: value}`` (before training, every
``train.eval_every`` steps and at the end); it evaluates ``objective.feature_model()`` and keeps what the
job writes at the end: every evaluation's metrics (``history``) and the latest features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from reidscale.data.datasets import load_dataset
from reidscale.evaluation.config import EvalConfig
from reidscale.evaluation.evaluator import evaluate_feature_set
from reidscale.evaluation.extract import extract_features
from reidscale.evaluation.features import FeatureSet

#: test-time batch size of the evaluation during training
EVAL_BATCH = 64


class HasFeatureModel(Protocol):
    """What the evaluator needs of an objective: the module mapping images [B, 3, H, W] to features [B, D]."""

    def feature_model(self) -> nn.Module: ...


def split_metrics(
    model: nn.Module,
    dataset: str,
    root: str,
    size: tuple[int, int],
    flip: bool,
    eval_config: EvalConfig,
    device: torch.device,
) -> tuple[dict[str, float], FeatureSet]:
    """``(metrics, features)`` of ``model`` on the query/gallery of benchmark ``dataset`` at ``root``.

    metrics: mAP, mINP and R1/R5/R10 as fractions. Every rank computes (ZeRO-3 needs all of them).
    """
    split = load_dataset(dataset, root)
    features = extract_features(model, split, EVAL_BATCH, device, height=size[0], width=size[1], flip=flip)
    result = evaluate_feature_set(features, eval_config)
    metrics = {"mAP": result.mAP, "mINP": result.mINP}
    metrics.update({f"R{r}": result.cmc[r - 1] for r in (1, 5, 10) if r <= len(result.cmc)})
    return metrics, features


@dataclass
class SplitEvaluator:
    """Evaluates a model on the query/gallery of ``dataset`` at ``root`` and remembers the results.

    Attributes:
        size: input (height, width) the images are resized to.
        flip: average each feature with that of the mirrored image.
        device: where features are extracted; None = where the model's parameters are (the engine's
            device, known once the engine has placed the model).
        history: ``{"step": s, **metrics}`` per evaluation, in order (earlier parts of a resumed run can be
            put in front with :meth:`restore`).
        latest_step, latest_features: the step and the features of the latest evaluation (None before).
    """

    dataset: str
    root: str
    size: tuple[int, int]
    flip: bool
    eval_config: EvalConfig
    device: torch.device | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    latest_step: int | None = None
    latest_features: FeatureSet | None = None

    def __call__(self, objective: HasFeatureModel, step: int) -> dict[str, float]:
        model = objective.feature_model()
        device = self.device if self.device is not None else _device_of(model)
        metrics, features = split_metrics(
            model, self.dataset, self.root, self.size, self.flip, self.eval_config, device
        )
        self.latest_step, self.latest_features = step, features
        self.history.append({"step": step, **metrics})
        return metrics

    def restore(self, earlier: list[dict[str, Any]]) -> None:
        """Put the evaluations of the earlier part of a resumed run in front of the history."""
        self.history[:0] = [dict(entry) for entry in earlier]

    @property
    def latest_metrics(self) -> dict[str, float]:
        """The metrics of the latest evaluation ({} before the first)."""
        if not self.history:
            return {}
        return {key: value for key, value in self.history[-1].items() if key != "step"}


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU when it has neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
