"""CION, stage 2: identity-guided self-distillation.

See docs/methods.md#stage-2-identity-guided-self-distillation.
"""

from reidscale.objectives.cion.center import update_center
from reidscale.objectives.cion.config import CionConfig
from reidscale.objectives.cion.head import DEFAULT_PROTOTYPES, CionHead
from reidscale.objectives.cion.loss import identity_distillation_loss
from reidscale.objectives.cion.objective import CionDistillation

__all__ = [
    "DEFAULT_PROTOTYPES",
    "CionConfig",
    "CionDistillation",
    "CionHead",
    "identity_distillation_loss",
    "update_center",
]
