"""Selective contrastive learning (docs/methods.md): two-branch heads, sharded memory banks, the objective."""

from reidscale.objectives.selective.banks import Anchors, SelectiveBanks
from reidscale.objectives.selective.config import SelectiveConfig
from reidscale.objectives.selective.heads import SelectiveFeatures, SelectiveNet, local_concat
from reidscale.objectives.selective.objective import SelectiveContrastive
from reidscale.objectives.selective.shards import RowShards, fetch_rows, gather_batches, merge_sharded_topk

__all__ = [
    "Anchors",
    "RowShards",
    "SelectiveBanks",
    "SelectiveConfig",
    "SelectiveContrastive",
    "SelectiveFeatures",
    "SelectiveNet",
    "fetch_rows",
    "gather_batches",
    "local_concat",
    "merge_sharded_topk",
]
