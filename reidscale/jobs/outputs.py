"""The files a training run leaves (weights, heads, features, results, rank lists), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from reidscale.evaluation.config import EvalConfig
from reidscale.evaluation.evaluator import save_rank_lists
from reidscale.evaluation.features import FeatureSet, save_feature_file
from reidscale.models.weights import safetensors_available, save_safetensors
from reidscale.utils.io import atomic_write, atomic_write_json


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
