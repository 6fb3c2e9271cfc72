"""Selective contrastive learning (docs/methods.md#selective-contrastive-learning) as an engine
:class:`~reidscale.objectives.base.Objective`.

One step, on every rank (B anchors each, W ranks, Bg = W·B)::

    g [B, Dg], l_1..l_S [B, S, Dl] = net(images)              the two heads (heads.py)
    anchors = all-gather(index, camera, g, l)                  the global batch, for selection and updates
    warm-up epochs:  positives = ∅,  negatives = random rows (self excluded)
    afterwards:      top-(P + N_neg) rows by selection score (sharded bank_topk, self excluded, λ_c penalty):
                     positives = the P best, negatives = the next N_neg
    C = [self, positives, negatives]; rows = M[C] fetched from their owners       [B, C, Dg]
    L(x) = mean_b −Σ_j w_j log softmax_j(x_b · rows_bj / τ),  w = (w_0, w_p × P, 0 × N_neg)
    loss = λ_p·L(l_cat) + (1 − λ_p)·L(g)                        through bank_contrastive_loss (fused kernels)
    bank updates (banks.py), then the engine's backward and optimizer step

:meth:`SelectiveContrastive.setup` builds the banks (zeros, :meth:`attach_banks`) once the device is known
and fills them by one pass over this rank's rows (:meth:`initialise_banks`) unless a checkpoint restores
them; they are checkpointed per rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from reidscale.kernels import bank_contrastive_loss
from reidscale.models.registry import Backbone
from reidscale.objectives.base import Objective, StepOutput, TrainingContext
from reidscale.objectives.selective.banks import Anchors, SelectiveBanks
from reidscale.objectives.selective.config import SelectiveConfig
from reidscale.objectives.selective.heads import SelectiveFeatures, SelectiveNet, local_concat


class SelectiveContrastive(Objective):
    """The SCL objective; ``batch`` = ``{"image": [B, 3, H, W], "index": [B] bank rows, "camid": [B]}``
    (optionally "pid": [B] pseudo-identities, only to report the share of positives that match).

    Args:
        backbone: a backbone with a convolutional ``forward_features`` map.
        config: the ``scl`` section.
        cameras: [N] int64 camera of every training image (bank row).
        seed: seeds the warm-up's random negatives (with the epoch and the anchor's row).
        pids: optional [N] int64 pseudo-identity of every row (tracklet), for the diagnostic only.
    """

    name = "selective"
    extra_state_per_rank = True

    def __init__(
        self,
        backbone: Backbone,
        config: SelectiveConfig,
        cameras: Tensor,
        seed: int = 0,
        pids: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.net = SelectiveNet(backbone, config)
        self.config = config
        self.seed = seed
        self.num_rows = int(cameras.shape[0])
        self._cameras = cameras.to(torch.int64).cpu()
        self._pids = None if pids is None else pids.to(torch.int64).cpu()
        self.banks: SelectiveBanks | None = None
        self.steps_per_epoch = 1
        self.epoch = 0

    # ------------------------------------------------------------------------------------- set-up
    def setup(self, context: TrainingContext) -> None:
        """Banks on ``context.device`` (this rank's shard), the epoch length of the warm-up, and, unless
        resuming, the banks filled by one pass over this rank's rows (``context.init_batches``). Reports
        (rank 0) when no training image has a camera id, so the same-camera penalty changes nothing."""
        banks = self.attach_banks(context.device, context.rank, context.world_size)
        self.set_steps_per_epoch(context.steps_per_epoch)
        if self.num_rows and bool((self._cameras == -1).all()):
            context.report(
                "cameras: every training image has camera id -1 (unknown): same-camera exclusion is off "
                f"(scl.cam_penalty={self.config.cam_penalty} adds the same to every row)"
            )
        if context.resuming:
            return
        if context.init_batches is None:
            raise ValueError("selective contrastive learning needs context.init_batches to fill its banks")
        rows = context.init_batches(banks.shards.start, banks.shards.stop, self.config.init_batch_size)
        filled = self.initialise_banks(rows)
        context.report(
            f"memory banks: {banks.num_rows} rows in {context.world_size} shard(s) of "
            f"{self.config.bank_dtype}; rank 0 initialised its {filled} rows"
        )

    def attach_banks(self, device: torch.device, rank: int = 0, world_size: int = 1) -> SelectiveBanks:
        """Create this rank's (zero) bank shard on ``device``; call once the engine has placed the model."""
        self.banks = SelectiveBanks(self.num_rows, self._cameras, self.config, device, rank, world_size)
        if self._pids is not None:
            self._pids = self._pids.to(device)
        return self.banks

    def set_steps_per_epoch(self, steps: int) -> None:
        """Optimizer steps per epoch: the warm-up is counted in epochs of the training loader."""
        if steps < 1:
            raise ValueError(f"steps per epoch must be >= 1, got {steps}")
        self.steps_per_epoch = steps

    @torch.no_grad()
    def initialise_banks(self, batches: Iterable[tuple[Tensor, Tensor]]) -> int:
        """Fill this rank's rows from ``batches`` of ``(index [b] int64, images [b, 3, H, W])`` covering
        them (un-augmented images). Returns the rows filled here; raises when any row of any rank is left
        empty (*collective*).

        The pass runs the network as training does, BatchNorm normalising with batch statistics (decided:
        the banks must live in the space of the training features; eval-mode running statistics of an
        untrained network describe another space), and leaves the running statistics untouched.
        """
        banks = self._require_banks()
        parameter = next(self.net.parameters())
        filled = 0
        with _frozen_batchnorm_statistics(self.net):
            for index, images in batches:
                g, stripes = self.net(images.to(device=parameter.device, dtype=parameter.dtype))
                banks.initialise_rows(index.to(banks.selection.device), g, stripes)
                filled += len(index)
        if not banks.all_initialised():
            raise ValueError("the initialisation pass left memory-bank rows empty: it must cover every row")
        return filled

    def _require_banks(self) -> SelectiveBanks:
        if self.banks is None:
            raise RuntimeError("call attach_banks(device, rank, world_size) before using the memory banks")
        return self.banks

    # -------------------------------------------------------------------------------------- a step
    def before_step(self, step: int, schedule_values: dict[str, float]) -> None:
        self.epoch = step // self.steps_per_epoch

    @property
    def in_warmup(self) -> bool:
        return self.epoch < self.config.warmup_epochs

    def forward(self, batch: dict[str, Tensor]) -> StepOutput:
        banks, cfg = self._require_banks(), self.config
        index = batch["index"].to(banks.selection.device, torch.int64)
        g, stripes = self.net(batch["image"])
        anchors = Anchors.gather(index, batch["camid"].to(index.device), g, stripes, banks.shards.world_size)
        with torch.no_grad():
            positives, negatives = self._select(banks, anchors, index)
            candidates = torch.cat([index[:, None], positives, negatives], dim=1)  # [B, C]
            weights = self._target_weights(candidates, positives.shape[1])
            rows = banks.mixture_rows(candidates)  # [B, C, Dg]
        flat_rows = rows.flatten(0, 1)
        slots = torch.arange(flat_rows.shape[0], device=index.device).view_as(candidates)
        slots = torch.where(candidates >= 0, slots, -1)
        loss_g = bank_contrastive_loss(g, flat_rows, cfg.temperature, candidates=slots, weights=weights)
        loss_l = bank_contrastive_loss(
            local_concat(stripes), flat_rows, cfg.temperature, candidates=slots, weights=weights
        )
        loss = cfg.local_weight * loss_l + (1.0 - cfg.local_weight) * loss_g
        with torch.no_grad():
            banks.update(anchors, positives)
        parts = {"loss_global": loss_g.detach(), "loss_local": loss_l.detach()}
        parts.update(self._diagnostics(index, positives))
        return StepOutput(loss=loss, parts=parts, num_images=len(index))

    def _select(self, banks: SelectiveBanks, anchors: Anchors, index: Tensor) -> tuple[Tensor, Tensor]:
        """(positives [B, P'], negatives [B, N_neg]) global rows, −1 padded; P' = 0 in the warm-up."""
        cfg = self.config
        if self.in_warmup:
            negatives = banks.random_rows(index, cfg.num_negatives, self.seed, self.epoch)
            return index.new_empty(len(index), 0), negatives
        _, chosen = banks.select(anchors, cfg.selection_k)
        return chosen[:, : cfg.num_positives], chosen[:, cfg.num_positives :]

    def _target_weights(self, candidates: Tensor, num_positives: int) -> Tensor:
        """[B, C] weights: w_0 for self, w_p for each positive slot, 0 for negatives and padding."""
        cfg = self.config
        weights = torch.zeros(candidates.shape, dtype=torch.float32, device=candidates.device)
        weights[:, 0] = cfg.self_weight
        weights[:, 1 : 1 + num_positives] = cfg.positive_weight
        return torch.where(candidates >= 0, weights, 0.0)

    def _diagnostics(self, index: Tensor, positives: Tensor) -> dict[str, Tensor]:
        """The share of selected positives with the anchor's pseudo-identity (when pids were given)."""
        if self._pids is None or positives.shape[1] == 0:
            return {}
        valid = positives >= 0
        same = self._pids[positives.clamp(min=0)] == self._pids[index][:, None]
        share = (same & valid).sum().float() / valid.sum().clamp(min=1).float()
        return {"positive_precision": share}

    # -------------------------------------------------------------------------- state and features
    def extra_state(self) -> dict[str, Any]:
        return {"banks": self._require_banks().state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if set(state) != {"banks"}:
            raise ValueError(f"selective contrastive extra state must hold 'banks', got keys {sorted(state)}")
        self._require_banks().load_state_dict(state["banks"])

    def feature_model(self) -> nn.Module:
        return SelectiveFeatures(self.net, self.config.test_feature)


@contextmanager
def _frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Train mode (BatchNorm uses batch statistics) with every running mean/var left as it is."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
        for m in norms
    ]
    was_training = module.training
    module.train()
    for norm in norms:
        norm.momentum = 0.0  # running ← (1 − 0)·running + 0·batch
    try:
        yield
    finally:
        for norm, (momentum, tracked) in zip(norms, saved, strict=True):
            norm.momentum = momentum
            if tracked is not None:
                norm.num_batches_tracked.copy_(tracked)
        module.train(was_training)
