"""Supervised ReID losses of the BoT recipe: label-smoothed cross-entropy and batch-hard triplet.

Both are vectorised over the batch (no Python loop over anchors) and return the mean over anchors.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

TRIPLET_MODES: tuple[str, ...] = ("soft", "hard")


def cross_entropy_label_smooth(logits: Tensor, targets: Tensor, epsilon: float = 0.1) -> Tensor:
    """Cross-entropy against smoothed one-hot targets (Szegedy et al. 2016, as in BoT).

    The target distribution is ``q = (1 − ε)·onehot(y) + ε / C`` over the C classes, and the loss is
    ``mean_b −Σ_c q_bc · log softmax(logits_b)_c``.

    logits: [B, C] float; targets: [B] int in 0..C−1; epsilon in [0, 1). Returns a scalar.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, C], got shape {tuple(logits.shape)}")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must be [B] with B={logits.shape[0]} (one class per logits row), "
            f"got shape {tuple(targets.shape)}"
        )
    if targets.is_floating_point():
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    num_classes = logits.shape[1]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(
            f"targets must lie in 0..{num_classes - 1} (logits has {num_classes} classes), "
            f"got range {int(targets.min())}..{int(targets.max())}"
        )
    log_probs = F.log_softmax(logits.float(), dim=1)
    smoothed = torch.full_like(log_probs, epsilon / num_classes)
    smoothed.scatter_add_(1, targets[:, None], torch.full_like(log_probs[:, :1], 1.0 - epsilon))
    return -(smoothed * log_probs).sum(dim=1).mean()


def pairwise_euclidean(feats: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between the rows of ``feats`` [B, D] → [B, B] (clamped at sqrt(eps) ≥ 0)."""
    feats = feats.float()
    squared_norms = feats.pow(2).sum(dim=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * feats @ feats.T
    return squared.clamp_min(eps).sqrt()


def hardest_pairs(dist: Tensor, pids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per anchor, the largest positive and smallest negative distance (batch-hard mining).

    dist: [B, B] distances; pids: [B] identity labels. Positives are the other images with the anchor's
    pid (the anchor itself is excluded), negatives the images with another pid.
    Returns (d_ap [B], d_an [B], valid [B] bool): ``valid`` is false for anchors lacking a positive or a
    negative; their d_ap / d_an entries are meaningless.
    """
    same = pids[:, None] == pids[None, :]
    self_mask = torch.eye(len(pids), dtype=torch.bool, device=dist.device)
    positive = same & ~self_mask
    negative = ~same
    d_ap = torch.where(positive, dist, torch.full_like(dist, float("-inf"))).amax(dim=1)
    d_an = torch.where(negative, dist, torch.full_like(dist, float("inf"))).amin(dim=1)
    valid = positive.any(dim=1) & negative.any(dim=1)
    return d_ap, d_an, valid


def batch_hard_triplet(
    feats: Tensor,
    pids: Tensor,
    mode: Literal["soft", "hard"] = "soft",
    margin: float = 0.3,
) -> Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on Euclidean distances.

    For each anchor a with a positive and a negative in the batch: d_ap = the farthest image of the same
    identity, d_an = the nearest image of another identity; the loss per anchor is
    ``softplus(d_ap − d_an)`` (``mode="soft"``, the soft margin; ``margin`` unused) or
    ``max(0, d_ap − d_an + margin)`` (``mode="hard"``). Anchors without a positive or negative are skipped.

    feats: [B, D] float; pids: [B] int. Returns the mean over valid anchors (scalar).
    """
    if feats.dim() != 2:
        raise ValueError(f"feats must be [B, D], got shape {tuple(feats.shape)}")
    if pids.dim() != 1 or pids.shape[0] != feats.shape[0]:
        raise ValueError(
            f"pids must be [B] with B={feats.shape[0]} (one identity per feature row), "
            f"got shape {tuple(pids.shape)}"
        )
    if mode not in TRIPLET_MODES:
        raise ValueError(f"mode must be one of {TRIPLET_MODES}, got {mode!r}")
    if mode == "hard" and margin < 0:
        raise ValueError(f"margin must be >= 0 for mode='hard', got {margin}")
    d_ap, d_an, valid = hardest_pairs(pairwise_euclidean(feats), pids)
    if not bool(valid.any()):
        raise ValueError(
            "batch_hard_triplet: no anchor in the batch has both a positive (another image of its pid) and "
            "a negative (an image of another pid); expected PK batches with P >= 2 identities and K >= 2"
        )
    gap = d_ap[valid] - d_an[valid]
    per_anchor = F.softplus(gap) if mode == "soft" else F.relu(gap + margin)
    return per_anchor.mean()
