"""Training methods as specs, each registered once here; the one training job (``reidscale.jobs.train``)
runs any of them. Adding a method: one package for its objective, one module with its ``MethodSpec``,
one ``register_method`` line below (docs/architecture.md#adding-a-method)."""

from reidscale.methods.bot import BOT
from reidscale.methods.cion import CION
from reidscale.methods.registry import method_names, method_spec, methods_of, register_method
from reidscale.methods.selective import SELECTIVE
from reidscale.methods.spec import DerivedTrain, EvalPlan, MethodSpec, TrainingData

register_method(SELECTIVE)
register_method(BOT)
register_method(CION)

__all__ = [
    "DerivedTrain",
    "EvalPlan",
    "MethodSpec",
    "TrainingData",
    "method_names",
    "method_spec",
    "methods_of",
    "register_method",
]
