"""Training objectives (the methods): each is an :class:`~reidscale.objectives.base.Objective`."""

from reidscale.objectives.base import Objective, StepOutput, no_weight_decay

__all__ = ["Objective", "StepOutput", "no_weight_decay"]
