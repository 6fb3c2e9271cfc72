"""Evaluation of a FeatureSet under an EvalConfig: distances chunk by chunk (optionally re-ranked) streamed
into the rank-metric accumulator, plus the results table, results JSON and rank-list picture."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from reidscale.evaluation.config import EvalConfig
from reidscale.evaluation.features import FeatureSet
from reidscale.evaluation.metrics import RankMetricAccumulator, RankMetrics, query_chunk_size
from reidscale.evaluation.rerank import rerank_distance_chunks
from reidscale.evaluation.visualize import png_path, render_rank_list_grid, write_png
from reidscale.neighbours.distance import distance_chunks, l2_normalize

TABLE_RANKS: tuple[int, ...] = (1, 5, 10)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; any other name is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"eval.device is {name!r} but no CUDA device is available")
    return device


def _prepared_feats(features: FeatureSet, config: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    device = resolve_device(config.device)
    query, gallery = features.query_feats.to(device), features.gallery_feats.to(device)
    if config.normalize:
        query, gallery = l2_normalize(query), l2_normalize(gallery)
    return query, gallery


def iter_query_distances(features: FeatureSet, config: EvalConfig) -> Iterator[tuple[int, torch.Tensor]]:
    """(first query row, distances [c, G]) per query chunk, re-ranked when config.rerank.enabled, plus
    ``config.camera_penalty`` on same-camera pairs when it is non-zero."""
    chunks = _distance_chunks(features, config)
    if config.camera_penalty == 0:
        return chunks
    return _with_camera_penalty(chunks, features, config.camera_penalty)


def _with_camera_penalty(
    chunks: Iterator[tuple[int, torch.Tensor]], features: FeatureSet, penalty: float
) -> Iterator[tuple[int, torch.Tensor]]:
    for start, distances in chunks:
        query_cams = features.query_camids[start : start + distances.shape[0]].to(distances.device)
        same = query_cams[:, None] == features.gallery_camids.to(distances.device)[None, :]
        yield start, distances + penalty * same.to(distances.dtype)


def _distance_chunks(features: FeatureSet, config: EvalConfig) -> Iterator[tuple[int, torch.Tensor]]:
    query, gallery = _prepared_feats(features, config)
    chunk = _query_chunk(features, config)
    if config.rerank.enabled:
        return rerank_distance_chunks(
            query,
            gallery,
            k1=config.rerank.k1,
            k2=config.rerank.k2,
            lambda_value=config.rerank.lambda_value,
            metric=config.metric,
            query_chunk=chunk,
            knn_backend=config.knn_backend,
        )
    return distance_chunks(query, gallery, config.metric, chunk)


def evaluate_feature_set(
    features: FeatureSet,
    config: EvalConfig,
    progress: Any = None,
) -> RankMetrics:
    """mAP / CMC / mINP of ``features`` under the standard protocol (docs/methods.md#evaluation-protocol).

    ``progress`` wraps the chunk iterator (e.g. ``tracker.progress``) to show a progress bar.
    """
    chunks: Iterable[tuple[int, torch.Tensor]] = iter_query_distances(features, config)
    if progress is not None:
        num_chunks = -(-features.num_query // _query_chunk(features, config))
        chunks = progress(chunks, total=num_chunks, desc="evaluate")
    device = resolve_device(config.device)
    accumulator = RankMetricAccumulator(
        features.gallery_pids.to(device), features.gallery_camids.to(device), max_rank=config.max_rank
    )
    for start, distances in chunks:
        stop = start + distances.shape[0]
        accumulator.update(
            distances,
            features.query_pids[start:stop].to(device),
            features.query_camids[start:stop].to(device),
        )
    return accumulator.compute()


def _query_chunk(features: FeatureSet, config: EvalConfig) -> int:
    """Queries per chunk: eval.query_chunk, else sized from eval.memory_budget_mb."""
    return config.query_chunk or query_chunk_size(features.num_gallery, config.memory_budget_mb)


def results_payload(metrics: RankMetrics, config: EvalConfig) -> dict[str, Any]:
    """The results JSON: fractions in [0, 1] plus the protocol settings that produced them."""
    payload = metrics.to_dict()
    payload["metric"] = config.metric
    payload["rerank"] = config.rerank.enabled
    payload["camera_penalty"] = config.camera_penalty
    return payload


def format_results_table(metrics: RankMetrics) -> str:
    """A small text table: mAP, R1, R5, R10, mINP (percent) and the number of valid queries."""
    ranks = [r for r in TABLE_RANKS if r <= len(metrics.cmc)]
    header = ["mAP", *(f"R{r}" for r in ranks), "mINP", "#valid queries"]
    values = [
        f"{100 * metrics.mAP:.2f}",
        *(f"{100 * metrics.cmc[r - 1]:.2f}" for r in ranks),
        f"{100 * metrics.mINP:.2f}",
        f"{metrics.num_valid_queries}",
    ]
    if metrics.num_skipped_queries:
        header.append("#skipped")
        values.append(str(metrics.num_skipped_queries))
    widths = [max(len(h), len(v)) for h, v in zip(header, values, strict=True)]
    row = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([row(header), rule, row(values)])


def rank_list_image(features: FeatureSet, config: EvalConfig) -> Image.Image:
    """The rank-list grid (in memory) of ``config.num_visualize`` queries spread over the query set, each with
    its top-10 gallery results; reads every image it draws, so a missing file fails here."""
    if features.query_paths is None or features.gallery_paths is None:
        raise ValueError(
            "eval.num_visualize > 0 needs 'query_paths' and 'gallery_paths' in the features file"
        )
    count = min(config.num_visualize, features.num_query)
    chosen = torch.linspace(0, features.num_query - 1, count).round().long().unique().tolist()
    subset = FeatureSet(
        query_feats=features.query_feats[chosen],
        gallery_feats=features.gallery_feats,
        query_pids=features.query_pids[chosen],
        query_camids=features.query_camids[chosen],
        gallery_pids=features.gallery_pids,
        gallery_camids=features.gallery_camids,
    )
    if config.rerank.enabled:  # re-ranking depends on the whole query set: compute all rows, keep the chosen
        rows = torch.cat([d.cpu() for _, d in iter_query_distances(features, config)])[chosen]
    else:
        rows = torch.cat([d.cpu() for _, d in iter_query_distances(subset, config)])
    return render_rank_list_grid(
        [features.query_paths[i] for i in chosen],
        features.gallery_paths,
        rows,
        list(range(len(chosen))),
        subset.query_pids,
        subset.query_camids,
        features.gallery_pids,
        features.gallery_camids,
    )


def save_rank_lists(features: FeatureSet, config: EvalConfig, output_png: Path) -> Path:
    """Write ``rank_list_image(features, config)`` to ``output_png`` atomically and return the path."""
    output_png = png_path(output_png)
    return write_png(output_png, rank_list_image(features, config))
