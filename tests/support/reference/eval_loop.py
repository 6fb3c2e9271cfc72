"""The plain per-query ReID evaluation loop: the oracle that reidscale.evaluation.metrics is tested against.

Written for readability, one query at a time, in numpy, independently of the vectorised code:
stable argsort of the query's distances, drop gallery items with the query's pid and camera, then read
CMC / AP / INP off the boolean match vector. A ranked list shorter than ``max_rank`` has its cumulative
match curve padded by repeating the last value.
"""

from __future__ import annotations

import numpy as np


def eval_loop(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
) -> dict:
    """mAP, mINP, cmc (list of max_rank floats), num_valid_queries, num_skipped_queries for distmat [Q, G].

    Raises ValueError when no query has a valid match.
    """
    distmat = np.asarray(distmat)
    q_pids, q_camids = np.asarray(q_pids), np.asarray(q_camids)
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    all_cmc, all_ap, all_inp = [], [], []
    num_skipped = 0
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind="stable")
        removed = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        matches = (g_pids[order] == q_pids[q])[~removed]
        if not matches.any():
            num_skipped += 1
            continue

        cmc = np.minimum(matches.cumsum(), 1).astype(np.float64)
        if len(cmc) < max_rank:
            cmc = np.concatenate([cmc, np.full(max_rank - len(cmc), cmc[-1])])
        all_cmc.append(cmc[:max_rank])

        hit_positions = np.flatnonzero(matches)  # 0-based positions of the correct items
        num_hits = len(hit_positions)
        precisions = [(i + 1) / (position + 1) for i, position in enumerate(hit_positions)]
        all_ap.append(sum(precisions) / num_hits)
        all_inp.append(num_hits / (hit_positions[-1] + 1))

    if not all_ap:
        raise ValueError("no query has a valid match")
    return {
        "mAP": float(np.mean(all_ap)),
        "mINP": float(np.mean(all_inp)),
        "cmc": np.mean(np.stack(all_cmc), axis=0).tolist(),
        "num_valid_queries": len(all_ap),
        "num_skipped_queries": num_skipped,
    }
