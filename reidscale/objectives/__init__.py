"""Training objectives (the methods): each is an :class:`~reidscale.objectives.base.Objective`."""

from reidscale.objectives.base import InitBatches, Objective, StepOutput, TrainingContext, no_weight_decay

__all__ = ["InitBatches", "Objective", "StepOutput", "TrainingContext", "no_weight_decay"]
