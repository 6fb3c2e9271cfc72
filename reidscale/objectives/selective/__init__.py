"""Selective contrastive learning (docs/methods.md): two-branch heads, sharded memory banks, the objective.

The row sharding of the banks and its collectives are in ``reidscale.sharded``.
"""

from reidscale.objectives.selective.banks import Anchors, SelectiveBanks
from reidscale.objectives.selective.config import SelectiveConfig
from reidscale.objectives.selective.heads import SelectiveFeatures, SelectiveNet, local_concat
from reidscale.objectives.selective.objective import SelectiveContrastive

__all__ = [
    "Anchors",
    "SelectiveBanks",
    "SelectiveConfig",
    "SelectiveContrastive",
    "SelectiveFeatures",
    "SelectiveNet",
    "local_concat",
]
