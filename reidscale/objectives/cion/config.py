"""Hyper-parameters of CION's identity-guided self-distillation (docs/methods.md), defaults = the released
code's. The optimiser, learning-rate, weight-decay, teacher-momentum and teacher-temperature schedules are the
engine's (``train.*``); what is CION's own is here, each open choice said in its field's doc.
"""

from __future__ import annotations

from dataclasses import dataclass

from reidscale.objectives.cion.head import BOTTLENECK_DIM, DEFAULT_PROTOTYPES, HIDDEN_DIM
from reidscale.utils.options import option

#: the released K schedule as fractions of the run: K = 2, 4, 6, 8 from epochs 0, 40, 60, 80 of 100 (the
#: identity sampler's default milestones, ``data.sampler.CION_K_MILESTONES``, in epochs)
K_SCHEDULE: tuple[tuple[float, int], ...] = ((0.0, 2), (0.4, 4), (0.6, 6), (0.8, 8))


@dataclass
class CionConfig:
    """CION stage 2: head, temperatures, centre, views, K schedule (``pretrain.method: cion``)."""

    num_prototypes: int = option(DEFAULT_PROTOTYPES, "C: prototypes of the head's last layer (2^16)")
    hidden_dim: int = option(HIDDEN_DIM, "width of the head's two hidden layers")
    head_batchnorm: bool = option(
        False,
        "BatchNorm after each hidden Linear of the head (DINO's use_bn_in_head; the released CION head has "
        "none): keeps a small network's head from mapping every image to one direction",
    )
    bottleneck_dim: int = option(BOTTLENECK_DIM, "width of the L2-normalised embedding before the prototypes")
    student_temp: float = option(
        0.1, "τ_s of the student's log-softmax (the teacher's τ_t is train.schedule.temperature_*)"
    )
    center_momentum: float = option(0.9, "m of the centre update c ← m·c + (1 − m)·mean(teacher outputs)")
    num_local: int = option(8, "local views per image (128×64 at a 256×128 input: half the input size)")
    color_jitter_p: float = option(
        0.8, "probability of colour jitter per view (brightness 0.4, contrast 0.4, saturation 0.2, hue)"
    )
    hue: float = option(0.1, "hue jitter range [-hue, hue] in turns (0.1 = ±36°)")
    grayscale_p: float = option(0.2, "probability of a grayscale view")
    k_schedule: list[list[float]] = option(
        doc="[fraction of the run's epochs, K] milestones of images per identity; the released 2→4→6→8 at "
        "epochs 0, 40, 60, 80 of 100, scaled to train.epochs (first epoch = floor(fraction × epochs))",
        factory=lambda: [[fraction, k] for fraction, k in K_SCHEDULE],
    )
    freeze_last_layer_epochs: int = option(
        1, "epochs during which the prototype layer keeps its initial values (restored after each step)"
    )
    sync_batchnorm: bool = option(
        True, "SyncBatchNorm over the ranks on GPUs as released (on the CPU, gloo, BatchNorm stays per rank)"
    )

    def __post_init__(self) -> None:
        for name in ("num_prototypes", "hidden_dim", "bottleneck_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"cion.{name} must be a positive integer, got {value!r}")
        if self.student_temp <= 0:
            raise ValueError(f"cion.student_temp must be > 0, got {self.student_temp}")
        if not 0.0 <= self.center_momentum <= 1.0:
            raise ValueError(f"cion.center_momentum must lie in [0, 1], got {self.center_momentum}")
        for name in ("color_jitter_p", "grayscale_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"cion.{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"cion.hue must lie in [0, 0.5], got {self.hue}")
        if self.num_local < 0 or self.freeze_last_layer_epochs < 0:
            raise ValueError("cion.num_local and cion.freeze_last_layer_epochs must be >= 0")
        pairs = [tuple(pair) for pair in self.k_schedule]
        if not pairs or any(len(pair) != 2 or pair[1] != int(pair[1]) or pair[1] < 1 for pair in pairs):
            raise ValueError(
                f"cion.k_schedule must be [fraction, K] pairs with integer K >= 1, got {self.k_schedule}"
            )
        fractions = [float(fraction) for fraction, _ in pairs]
        if fractions[0] != 0.0 or fractions != sorted(set(fractions)) or fractions[-1] >= 1:
            raise ValueError(
                "cion.k_schedule fractions must start at 0 and increase strictly below 1, "
                f"got {self.k_schedule}"
            )
        self.k_schedule = [[float(fraction), int(k)] for fraction, k in pairs]

    def k_milestones(self, epochs: int) -> tuple[tuple[int, int], ...]:
        """The K schedule as ``((first epoch, K), ...)`` for a run of ``epochs`` epochs (what ``KSchedule``
        takes; milestones that fall on the same epoch: the later one wins)."""
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        by_epoch: dict[int, int] = {}
        for fraction, k in self.k_schedule:
            by_epoch[int(fraction * epochs)] = int(k)
        return tuple(sorted(by_epoch.items()))
