"""Hyper-parameters of selective contrastive learning (docs/methods.md), defaults = the released code's.

Every choice the paper leaves open is a field here; its doc says what we decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reidscale.kernels.support import BANK_TOPK_MAX_K as MAX_K
from reidscale.utils.options import option

BANK_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
TEST_FEATURES: tuple[str, ...] = ("concat", "global", "local")


@dataclass
class SelectiveConfig:
    """Selective contrastive learning: heads, memory banks, selection, loss (``reidscale pretrain``)."""

    global_dim: int = option(2048, "width of the global embedding g (GAP → Linear → BN → L2)")
    local_dim: int = option(256, "width of each stripe embedding l_k (stripe avg-pool → Linear → BN → L2)")
    num_stripes: int = option(8, "horizontal stripes of the feature map (local branch)")
    num_positives: int = option(7, "P: nearest bank rows taken as positives (self excluded)")
    num_negatives: int = option(500, "hard negatives: the bank ranks P+1 .. P+num_negatives (no threshold)")
    warmup_epochs: int = option(
        3, "epochs with positives = self only and num_negatives random negatives (no selection)"
    )
    lambda_global: float = option(
        0.5, "λ_g: weight of the global distance in the selection distance; the local mean gets 1 − λ_g"
    )
    cam_penalty: float = option(
        0.04, "λ_c: added to the selection distance of same-camera rows (paper range 0.03–0.05)"
    )
    temperature: float = option(
        0.1, "softmax temperature of the loss (logits = x·M / τ; 0.1 = the paper's 10·)"
    )
    self_weight: float = option(0.5, "w_0: target weight of the anchor's own mixture-bank row")
    positive_weight: float = option(0.125, "w_j: target weight of each selected positive")
    local_weight: float = option(
        0.3, "λ_p: weight of the local-feature loss L(l_cat); the global loss L(g) gets 1 − λ_p"
    )
    bank_momentum: float = option(
        0.5, "global / local bank update: row ← normalise(m·row + (1 − m)·feature) for the anchor's row"
    )
    mixture_momentum: float = option(
        0.5, "mixture bank update of the anchor's row and each positive row: row ← normalise(m·row + (1−m)·x)"
    )
    bank_dtype: Literal["float32", "float16", "bfloat16"] = option(
        "float32", "storage dtype of the three banks (scores and updates are computed in float32)"
    )
    init_batch_size: int = option(64, "images per forward pass of the bank initialisation pass")
    test_feature: Literal["concat", "global", "local"] = option(
        "concat",
        "test embedding: concat = normalise([g | l_cat]) (decided; the paper uses both), global = g, "
        "local = l_cat",
    )

    def __post_init__(self) -> None:
        positive_ints = ("global_dim", "local_dim", "num_stripes", "init_batch_size")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"scl.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_positives", "num_negatives", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"scl.{name} must be >= 0, got {getattr(self, name)}")
        if self.num_negatives == 0:
            raise ValueError("scl.num_negatives must be >= 1 (the loss needs negatives)")
        if self.num_positives + self.num_negatives > MAX_K:
            raise ValueError(
                f"scl.num_positives + scl.num_negatives must be <= {MAX_K} (one bank_topk call), "
                f"got {self.num_positives} + {self.num_negatives}"
            )
        for name in ("lambda_global", "local_weight", "bank_momentum", "mixture_momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"scl.{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("cam_penalty", "self_weight", "positive_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"scl.{name} must be >= 0, got {getattr(self, name)}")
        if self.self_weight == 0 and (self.positive_weight == 0 or self.num_positives == 0):
            raise ValueError("scl: every target weight is 0 (self_weight, positive_weight × num_positives)")
        if self.num_stripes * self.local_dim != self.global_dim:
            raise ValueError(
                f"scl.num_stripes × scl.local_dim ({self.num_stripes} × {self.local_dim}) must equal "
                f"scl.global_dim ({self.global_dim}): the mixture bank holds g and l_cat in the same rows"
            )
        if not self.temperature > 0:
            raise ValueError(f"scl.temperature must be > 0, got {self.temperature}")
        if self.bank_dtype not in BANK_DTYPES:
            raise ValueError(f"scl.bank_dtype must be one of {BANK_DTYPES}, got {self.bank_dtype!r}")
        if self.test_feature not in TEST_FEATURES:
            raise ValueError(f"scl.test_feature must be one of {TEST_FEATURES}, got {self.test_feature!r}")

    @property
    def selection_k(self) -> int:
        """Bank rows selected per anchor after the warm-up: P positives then the hard negatives."""
        return self.num_positives + self.num_negatives
