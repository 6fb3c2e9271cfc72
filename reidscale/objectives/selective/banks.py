"""The three memory banks of selective contrastive learning, row-sharded over the ranks
(docs/methods.md#selective-contrastive-learning).

Storage on each rank (its block of rows, ``shards.size`` = n of the N training images):

- ``selection`` [n, Dg + S·Dl]: the global bank G (columns ``[0, Dg)``) and the S local banks L_1..L_S
  (``Dg + k·Dl`` onwards) side by side. The method describes L as S×N×Dl; the row-major [N, S·Dl] layout holds
  the same numbers and makes the selection score ``λ_g·g·G_n + (1−λ_g)/S·Σ_k l_k·L_kn`` ONE inner product of
  the weighted query ``[λ_g·g | (1−λ_g)/S·l_1 | …]`` with a row, which the fused ``bank_topk`` kernels run
  without copying the bank (see ``reidscale.kernels.reference_topk`` for the distance ↔ score identity).
- ``mixture`` [n, Dg]: M, the bank the loss is defined on.
- ``cameras`` [n]: the camera of each row (for the same-camera penalty λ_c of the selection distance).

Selection (:meth:`SelectiveBanks.select`): every rank scores ALL ranks' anchors (all-gathered) against its
own rows with ``bank_topk`` (self excluded, ``cam_penalty = λ_c / 2``), and the per-shard lists are merged
into the exact global top-k (``reidscale.sharded.merge_sharded_topk``). Updates
(:meth:`SelectiveBanks.update`) are applied by the owner of each row, in one canonical global order, so W
ranks leave the banks exactly as one rank holding every row and the whole global batch would.

Update rules (momentum m = 0.5 in the paper): G and L_k rows of each anchor ← normalise(m·row + (1−m)·f);
mixture rows of each anchor's slots (self, then its positives) ← normalise(m·row + (1−m)·x), first for
x = g of every anchor (global batch order, slots in order), then for x = l_cat. Initialisation (decided):
G, L_k = the features of one pass over the data, and M = what those two mixture updates give when applied to
a zero row, normalise(g + l_cat).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from reidscale.kernels import bank_topk, bank_update
from reidscale.objectives.selective.config import SelectiveConfig
from reidscale.objectives.selective.heads import local_concat
from reidscale.sharded.rows import RowShards, fetch_rows, gather_batches, merge_sharded_topk

#: version of the state_dict layout
STATE_VERSION = 1


@dataclass
class Anchors:
    """The global batch (every rank's anchors, rank order) as the banks need it.

    index: [Bg] int64 bank row of each anchor; cameras: [Bg] int64; g: [Bg, Dg] and stripes: [Bg, S, Dl]
    float32 unit vectors (detached).
    """

    index: Tensor
    cameras: Tensor
    g: Tensor
    stripes: Tensor

    @classmethod
    def gather(cls, index: Tensor, cameras: Tensor, g: Tensor, stripes: Tensor, world_size: int) -> Anchors:
        """All-gather this rank's B anchors (B equal on every rank) into the global batch."""
        local = torch.cat([g.detach().float(), stripes.detach().float().flatten(1)], dim=1)
        ids = torch.stack([index.to(torch.int64), cameras.to(torch.int64)], dim=1)
        everything, all_ids = gather_batches(local, world_size), gather_batches(ids, world_size)
        width = g.shape[1]
        return cls(
            index=all_ids[:, 0],
            cameras=all_ids[:, 1],
            g=everything[:, :width],
            stripes=everything[:, width:].view(-1, *stripes.shape[1:]),
        )


class SelectiveBanks:
    """This rank's shard of G, L_1..L_S and M (module docstring). Methods marked *collective* must be called
    by every rank in the same order."""

    def __init__(
        self,
        num_rows: int,
        cameras: Tensor,
        config: SelectiveConfig,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if cameras.dim() != 1 or cameras.shape[0] != num_rows:
            raise ValueError(f"cameras must have shape [num_rows] = [{num_rows}], got {tuple(cameras.shape)}")
        self.config = config
        self.shards = RowShards(num_rows, world_size, rank)
        dtype = getattr(torch, config.bank_dtype)
        width = config.global_dim + config.num_stripes * config.local_dim
        self.selection = torch.zeros(self.shards.size, width, dtype=dtype, device=device)
        self.mixture = torch.zeros(self.shards.size, config.global_dim, dtype=dtype, device=device)
        self.cameras = cameras[self.shards.start : self.shards.stop].to(device=device, dtype=torch.int64)
        self.initialised = torch.zeros(self.shards.size, dtype=torch.bool, device=device)

    # ------------------------------------------------------------------------------------------ views
    @property
    def num_rows(self) -> int:
        return self.shards.num_rows

    def global_bank(self) -> Tensor:
        """G, this rank's rows: a [n, Dg] view."""
        return self.selection[:, : self.config.global_dim]

    def local_bank(self, stripe: int) -> Tensor:
        """L_stripe, this rank's rows: a [n, Dl] view."""
        start = self.config.global_dim + stripe * self.config.local_dim
        return self.selection[:, start : start + self.config.local_dim]

    def weighted_banks(self) -> list[tuple[Tensor, float]]:
        """``[(G, λ_g), (L_1, (1−λ_g)/S), …]``: the selection score as ``bank_topk``'s multi-bank argument."""
        lam, stripes = self.config.lambda_global, self.config.num_stripes
        return [(self.global_bank(), lam)] + [
            (self.local_bank(k), (1.0 - lam) / stripes) for k in range(stripes)
        ]

    # ---------------------------------------------------------------------------------------- filling
    def initialise_rows(self, index: Tensor, g: Tensor, stripes: Tensor) -> None:
        """Set this rank's rows ``index`` (global, all owned here) from one pass's features (module doc).

        index: [B] int64; g: [B, Dg]; stripes: [B, S, Dl] (unit vectors).
        """
        local = self._local_rows(index, "index")
        with torch.no_grad():
            g32, s32 = g.detach().float(), stripes.detach().float()
            self.selection[local] = torch.cat([g32, s32.flatten(1)], dim=1).to(self.selection.dtype)
            self.mixture[local] = F.normalize(g32 + local_concat(s32), dim=1).to(self.mixture.dtype)
            self.initialised[local] = True

    def all_initialised(self) -> bool:
        """True when every row of every shard was filled (a collective when sharded)."""
        missing = (~self.initialised).sum().reshape(1).to(torch.int64)
        if self.shards.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(missing)
        return int(missing) == 0

    def _local_rows(self, index: Tensor, name: str) -> Tensor:
        if index.dtype != torch.int64 or index.dim() != 1:
            raise ValueError(f"{name} must be a 1-D int64 tensor, got {index.dtype} {tuple(index.shape)}")
        if index.numel() and not bool(self.shards.owned(index).all()):
            raise ValueError(
                f"{name} holds rows outside this rank's shard [{self.shards.start}, {self.shards.stop})"
            )
        return index - self.shards.start

    # --------------------------------------------------------------------------------------- selection
    def select(self, anchors: Anchors, k: int) -> tuple[Tensor, Tensor]:
        """*Collective.* The k best rows by selection score for THIS rank's anchors, self excluded.

        Returns ``(scores [B, k] float32, indices [B, k] int64 global)``, best first, ties by index, padded
        with (−inf, −1) when fewer than k rows exist. Score = λ_g·g·G_n + (1−λ_g)/S·Σ l_k·L_kn − λ_c/2·[same
        camera] = 1 − (selection distance)/2 for unit rows.
        """
        queries = torch.cat([anchors.g, anchors.stripes.flatten(1)], dim=1).to(self.selection.device)
        own = self.shards.owned(anchors.index)
        self_index = torch.where(own, anchors.index - self.shards.start, -1)
        scores, local_ids = bank_topk(
            queries,
            self.weighted_banks(),
            k,
            self_index=self_index,
            query_cams=anchors.cameras,
            bank_cams=self.cameras,
            cam_penalty=self.config.cam_penalty / 2,
        )
        global_ids = torch.where(local_ids >= 0, local_ids + self.shards.start, -1)
        return merge_sharded_topk(scores, global_ids, k, self.shards.world_size)

    def random_rows(self, index: Tensor, count: int, seed: int, epoch: int) -> Tensor:
        """``count`` distinct random rows per anchor, self excluded: [B] → [B, count] int64 (−1 padding when
        fewer rows exist). Each anchor's draw is seeded by (seed, epoch, its index) alone, so it does not
        depend on the batch, the rank or the world size."""
        rows = []
        others = self.num_rows - 1
        for anchor in index.tolist():
            generator = torch.Generator().manual_seed(_draw_seed(seed, epoch, anchor))
            if others <= 4 * count:
                picked = torch.randperm(others, generator=generator)[:count]
            else:
                picked = _distinct_draw(others, count, generator)
            picked = picked + (picked >= anchor).to(torch.int64)  # skip self
            rows.append(torch.cat([picked, torch.full((count - len(picked),), -1, dtype=torch.int64)]))
        return torch.stack(rows).to(index.device) if rows else index.new_empty(0, count)

    # --------------------------------------------------------------------------------------- the loss
    def mixture_rows(self, candidates: Tensor) -> Tensor:
        """*Collective.* M rows of ``candidates`` [B, C] (global, −1 = padding) → [B, C, Dg] (bank dtype)."""
        rows = fetch_rows(self.mixture, candidates.reshape(-1), self.shards)
        return rows.view(*candidates.shape, -1)

    # --------------------------------------------------------------------------------------- updates
    def update(self, anchors: Anchors, positives: Tensor) -> None:
        """*Collective.* Apply the step's updates (module docstring) to the rows this rank owns.

        anchors: the global batch; positives: [B, P] int64 global rows (−1 = none) of THIS rank's anchors.
        """
        positives = gather_batches(positives, self.shards.world_size)
        cfg, device = self.config, self.selection.device
        index = anchors.index.to(device)
        own = self.shards.owned(index)
        local = index[own] - self.shards.start
        bank_update(self.global_bank(), local, anchors.g[own].to(device), cfg.bank_momentum)
        own_stripes = anchors.stripes[own].to(device)  # [b, S, Dl]
        for stripe in range(cfg.num_stripes):
            bank_update(self.local_bank(stripe), local, own_stripes[:, stripe], cfg.bank_momentum)
        slots = torch.cat([index[:, None], positives.to(device)], dim=1).reshape(-1)  # (anchor, slot) order
        per_slot = positives.shape[1] + 1
        targets, features = [], []
        for x in (anchors.g, local_concat(anchors.stripes)):
            keep = self.shards.owned(slots)
            targets.append(slots[keep] - self.shards.start)
            features.append(x.to(device).repeat_interleave(per_slot, dim=0)[keep])
        bank_update(self.mixture, torch.cat(targets), torch.cat(features), cfg.mixture_momentum)

    # -------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """This shard (CPU tensors) with its place in the partition."""
        return {
            "version": STATE_VERSION,
            "num_rows": self.num_rows,
            "world_size": self.shards.world_size,
            "rank": self.shards.rank,
            "selection": self.selection.cpu(),
            "mixture": self.mixture.cpu(),
            "initialised": self.initialised.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s shard; it must come from the same rank of the same partition."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"bank state version {state.get('version')!r}, expected {STATE_VERSION}")
        here = (self.num_rows, self.shards.world_size, self.shards.rank)
        saved = (state["num_rows"], state["world_size"], state["rank"])
        if saved != here:
            raise ValueError(
                f"the checkpointed bank shard is (rows, world size, rank) = {saved}, this run has {here}: "
                "resume with the same data and number of ranks"
            )
        for name in ("selection", "mixture", "initialised"):
            current = getattr(self, name)
            if state[name].shape != current.shape:
                raise ValueError(
                    f"bank {name}: saved shape {tuple(state[name].shape)}, expected {tuple(current.shape)}"
                )
            current.copy_(state[name].to(dtype=current.dtype))


def _draw_seed(seed: int, epoch: int, anchor: int) -> int:
    """A 63-bit seed mixing (seed, epoch, anchor) (odd multipliers, so distinct triples rarely collide)."""
    return (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + anchor * 0x94D049BB133111EB) % 2**63


def _distinct_draw(others: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` distinct values in [0, others) (others > 4·count): draws with replacement, first
    occurrences kept in draw order, repeated until enough."""
    picked = torch.empty(0, dtype=torch.int64)
    while len(picked) < count:
        draw = torch.cat([picked, torch.randint(others, (2 * count,), generator=generator)])
        values, inverse = torch.unique(draw, return_inverse=True)
        first = torch.full((len(values),), len(draw), dtype=torch.int64)
        first.scatter_reduce_(0, inverse, torch.arange(len(draw)), reduce="amin")
        picked = draw[torch.sort(first).values]
    return picked[:count]
