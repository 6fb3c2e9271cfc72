"""What every training job shares: evaluating on a test split, gathering weights, writing the outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from reidscale.config.schema import EvalConfig
from reidscale.data.datasets import load_dataset
from reidscale.evaluation.evaluator import evaluate_feature_set, save_rank_lists
from reidscale.evaluation.extract import extract_features
from reidscale.evaluation.features import FeatureSet, save_feature_file
from reidscale.models.weights import safetensors_available, save_safetensors
from reidscale.utils.io import atomic_write, atomic_write_json

#: test-time batch size of the periodic evaluation
EVAL_BATCH = 64


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


def gathered_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """A full CPU copy of ``module.state_dict()``, gathering ZeRO-3 partitioned parameters first."""
    params = list(module.parameters())
    if any(hasattr(param, "ds_id") for param in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {name: value.detach().float().cpu().clone() for name, value in module.state_dict().items()}
    return {name: value.detach().float().cpu().clone() for name, value in module.state_dict().items()}


def write_run_outputs(
    run_dir: Path,
    weights: dict[str, torch.Tensor],
    features: FeatureSet | None,
    results: dict[str, Any],
    eval_config: EvalConfig | None = None,
    heads: dict[str, torch.Tensor] | None = None,
) -> dict[str, Path]:
    """Rank 0's files in ``run_dir``, each written atomically. Returns name → path:

    - ``weights``: ``backbone.pt``, ``weights`` = the backbone's plain state_dict (what
      ``create_backbone(name)`` loads with strict keys, and what ``model.weights`` takes);
    - ``safetensors``: ``backbone.safetensors``, the same tensors, when safetensors is installed;
    - ``heads``: ``heads.pt``, the state_dict of the objective's heads, when ``heads`` is given;
    - ``features``: ``features.pt``, the test features ``reidscale evaluate`` reads, when given;
    - ``results``: ``results.json``;
    - ``rank_list``: ``rank_list.png``, when ``eval_config.num_visualize`` > 0.
    """
    paths = {"weights": atomic_write(run_dir / "backbone.pt", lambda tmp: torch.save(weights, tmp))}
    if safetensors_available():
        paths["safetensors"] = atomic_write(
            run_dir / "backbone.safetensors", lambda tmp: save_safetensors(weights, tmp)
        )
    if heads is not None:
        paths["heads"] = atomic_write(run_dir / "heads.pt", lambda tmp: torch.save(heads, tmp))
    if features is not None:
        paths["features"] = save_feature_file(run_dir / "features.pt", features)
        if eval_config is not None and eval_config.num_visualize > 0:
            paths["rank_list"] = save_rank_lists(features, eval_config, run_dir / "rank_list.png")
    paths["results"] = run_dir / "results.json"
    atomic_write_json(paths["results"], results)
    return paths
