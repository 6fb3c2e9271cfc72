"""Helpers of the selective-contrastive tests: the independent truth and the 1-vs-2-rank scenario.

Independent truth (the formulas of docs/methods.md written out in float64 loops, sharing no code with
``reidscale.objectives.selective``): :func:`brute_distance`, :func:`brute_scores`, :func:`brute_select`,
:func:`brute_update`, :func:`brute_loss`.

The scenario (:func:`scenario`) runs the same global batches through the banks and through the objective on
``world_size`` ranks; :func:`spawn_two_ranks` starts two gloo ranks (torch.multiprocessing spawn) that each
save their results, which the test compares with one rank holding every row and the whole global batch.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidscale.models.registry import Backbone
from reidscale.objectives.selective import Anchors, SelectiveBanks, SelectiveConfig, SelectiveContrastive
from tests.support.gloo_ranks import run_on_two_ranks

# ---------------------------------------------------------------------------------- independent truth


def unit(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Random float32 unit vectors along the last dimension."""
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def brute_distance(
    g: Tensor,
    stripes: Tensor,
    cams: Tensor,
    bank_g: Tensor,
    bank_l: Tensor,
    bank_cams: Tensor,
    cfg: SelectiveConfig,
) -> Tensor:
    """The selection distance (docs/methods.md), float64: g [B, Dg], stripes [B, S, Dl], bank_g [N, Dg],
    bank_l [N, S, Dl] → D [B, N] = λ_g‖g − G_n‖² + (1−λ_g)·mean_k‖l_k − L_kn‖² + λ_c·[same camera]."""
    g, stripes, bank_g, bank_l = (t.double() for t in (g, stripes, bank_g, bank_l))
    d_global = ((g[:, None, :] - bank_g[None]) ** 2).sum(-1)
    d_local = ((stripes[:, None] - bank_l[None]) ** 2).sum(-1).mean(-1)
    same = (cams[:, None] == bank_cams[None]).double()
    return cfg.lambda_global * d_global + (1 - cfg.lambda_global) * d_local + cfg.cam_penalty * same


def brute_scores(
    g: Tensor,
    stripes: Tensor,
    cams: Tensor,
    bank_g: Tensor,
    bank_l: Tensor,
    bank_cams: Tensor,
    cfg: SelectiveConfig,
) -> Tensor:
    """The inner-product score (equal to 1 − D/2 for unit rows), float64, for banks that are not exactly
    unit (fp16/bf16 rounding): λ_g g·G_n + (1−λ_g)/S Σ_k l_k·L_kn − λ_c/2·[same camera]  → [B, N]."""
    g, stripes, bank_g, bank_l = (t.double() for t in (g, stripes, bank_g, bank_l))
    s_global = g @ bank_g.T
    s_local = torch.einsum("bsd,nsd->bn", stripes, bank_l) / stripes.shape[1]
    same = (cams[:, None] == bank_cams[None]).double()
    return cfg.lambda_global * s_global + (1 - cfg.lambda_global) * s_local - cfg.cam_penalty / 2 * same


def brute_select(key: Tensor, self_index: Tensor, k: int) -> Tensor:
    """The k rows with the smallest ``key`` [B, N] per anchor, ``self_index`` [B] excluded, ties by the
    lower row (Python's stable sort), −1 padding: → [B, k] int64."""
    out = torch.full((key.shape[0], k), -1, dtype=torch.int64)
    for b in range(key.shape[0]):
        rows = [n for n in range(key.shape[1]) if n != int(self_index[b])]
        ranked = sorted(rows, key=lambda n: float(key[b, n]))[:k]
        out[b, : len(ranked)] = torch.tensor(ranked, dtype=torch.int64)
    return out


def _mix(row: Tensor, feature: Tensor, momentum: float) -> Tensor:
    new = momentum * row + (1 - momentum) * feature
    return new / max(float(new.norm()), 1e-12)


def brute_update(
    bank_g: Tensor,
    bank_l: Tensor,
    mixture: Tensor,
    index: Tensor,
    g: Tensor,
    stripes: Tensor,
    positives: Tensor,
    cfg: SelectiveConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """One step's bank updates, one pair at a time in float64 (returns new copies).

    bank_g [N, Dg], bank_l [N, S, Dl], mixture [N, Dg]; index [Bg], g [Bg, Dg], stripes [Bg, S, Dl],
    positives [Bg, P] (−1 = none). G and each L_k row of every anchor ← normalise(m·row + (1−m)·f); then
    for x = g, then x = l_cat: for each anchor in order, for its slots (self, positives in order):
    M[slot] ← normalise(m'·M[slot] + (1−m')·x).
    """
    bank_g, bank_l, mixture = bank_g.double().clone(), bank_l.double().clone(), mixture.double().clone()
    g, stripes = g.double(), stripes.double()
    for b, row in enumerate(index.tolist()):
        bank_g[row] = _mix(bank_g[row], g[b], cfg.bank_momentum)
        for k in range(stripes.shape[1]):
            bank_l[row, k] = _mix(bank_l[row, k], stripes[b, k], cfg.bank_momentum)
    l_cat = stripes.flatten(1) / math.sqrt(stripes.shape[1])
    for x in (g, l_cat):
        for b, row in enumerate(index.tolist()):
            for slot in [row, *positives[b].tolist()]:
                if slot >= 0:
                    mixture[slot] = _mix(mixture[slot], x[b], cfg.mixture_momentum)
    return bank_g, bank_l, mixture


def brute_loss(
    x: Tensor, mixture: Tensor, candidates: list[list[int]], weights: list[list[float]], tau: float
) -> Tensor:
    """mean_b −Σ_j w_bj·log softmax_j(x_b·M[c_bj]/τ) over the listed candidates, float64 (x may carry a
    gradient): x [B, D], mixture [N, D] → scalar."""
    total = 0.0
    for b, (rows, w) in enumerate(zip(candidates, weights, strict=True)):
        logits = mixture.double()[rows] @ x[b].double() / tau
        total = total - (torch.tensor(w, dtype=torch.float64) * torch.log_softmax(logits, 0)).sum()
    return total / len(candidates)


# -------------------------------------------------------------------------- fixed-feature "network"


class FixedNet(nn.Module):
    """Stands in for SelectiveNet: "images" [B, Dg + S·Dl] are raw features; g = normalise(x_g A_g),
    l_k = normalise(x_k A_l) with trainable A_g [Dg, Dg], A_l [Dl, Dl] (so the loss has a gradient)."""

    def __init__(self, cfg: SelectiveConfig, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.cfg = cfg
        self.a_global = nn.Parameter(
            torch.eye(cfg.global_dim) + 0.1 * torch.randn(cfg.global_dim, cfg.global_dim, generator=gen)
        )
        self.a_local = nn.Parameter(
            torch.eye(cfg.local_dim) + 0.1 * torch.randn(cfg.local_dim, cfg.local_dim, generator=gen)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dg = self.cfg.global_dim
        g = F.normalize(x[:, :dg] @ self.a_global, dim=1)
        local = x[:, dg:].reshape(x.shape[0], self.cfg.num_stripes, self.cfg.local_dim)
        return g, F.normalize(local @ self.a_local, dim=2)


class MapBackbone(Backbone):
    """A one-conv backbone with a [B, 6, H, W] map (stride 1) and mean pooling."""

    feature_dim = 6
    img_size = (8, 4)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward_features(self, images: Tensor) -> Tensor:
        return torch.relu(self.conv(images))

    def pool_features(self, features: Tensor) -> Tensor:
        return features.mean(dim=(2, 3))


def objective_with_fixed_net(cfg: SelectiveConfig, cameras: Tensor, seed: int = 0) -> SelectiveContrastive:
    """A SelectiveContrastive whose network is a :class:`FixedNet`."""
    objective = SelectiveContrastive(MapBackbone(), cfg, cameras, seed=seed)
    objective.net = FixedNet(cfg, seed)
    return objective


# ---------------------------------------------------------------------------------------- the scenario

ROWS, BATCH, STEPS = 13, 6, 3  # N odd (uneven shards 6 | 7), global batch 6


def world_config(bank_dtype: str = "float32") -> SelectiveConfig:
    return SelectiveConfig(
        global_dim=16,
        local_dim=4,
        num_stripes=4,
        num_positives=2,
        num_negatives=5,
        warmup_epochs=1,
        cam_penalty=0.3,
        bank_dtype=bank_dtype,
    )


def world_data() -> dict[str, Tensor]:
    """Cameras [N], initial features [N, Dg + S·Dl] and per step the anchors [STEPS, Bg] with features
    [STEPS, Bg, Dg + S·Dl] (near their own initial rows, so self would win without the exclusion)."""
    cfg, gen = world_config(), torch.Generator().manual_seed(7)
    width = cfg.global_dim + cfg.num_stripes * cfg.local_dim
    init = torch.randn(ROWS, width, generator=gen)
    index = torch.stack([torch.randperm(ROWS, generator=gen)[:BATCH] for _ in range(STEPS)])
    step_features = init[index] + 0.4 * torch.randn(STEPS, BATCH, width, generator=gen)
    return {
        "cameras": torch.randint(0, 3, (ROWS,), generator=gen),
        "init": init,
        "index": index,
        "features": step_features,
    }


def _bank_run(rank: int, world_size: int, bank_dtype: str, data: dict[str, Tensor]) -> dict[str, list]:
    """Banks alone: select (k = P + N_neg and k = 15 > N − 1), fetch mixture rows, update, per step."""
    cfg = world_config(bank_dtype)
    net = FixedNet(cfg)
    banks = SelectiveBanks(ROWS, data["cameras"], cfg, rank=rank, world_size=world_size)
    own = torch.arange(banks.shards.start, banks.shards.stop)
    with torch.no_grad():  # features of the whole set, then sliced: bitwise the same on every world size
        init_g, init_stripes = net(data["init"])
        banks.initialise_rows(own, init_g[own], init_stripes[own])
    out: dict[str, list] = {k: [] for k in ("ids", "scores", "ids_padded", "rows", "selection", "mixture")}
    per_rank = BATCH // world_size
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    for step in range(STEPS):
        index = data["index"][step, mine]
        with torch.no_grad():
            g, stripes = (t[mine] for t in net(data["features"][step]))
        anchors = Anchors.gather(index, data["cameras"][index], g, stripes, world_size)
        scores, ids = banks.select(anchors, cfg.selection_k)
        out["ids_padded"].append(banks.select(anchors, 15)[1])
        candidates = torch.cat([index[:, None], ids], dim=1)
        out["rows"].append(banks.mixture_rows(candidates).float())
        banks.update(anchors, ids[:, : cfg.num_positives])
        out["ids"].append(ids)
        out["scores"].append(scores)
        out["selection"].append(banks.selection.float().clone())
        out["mixture"].append(banks.mixture.float().clone())
    return out


def _objective_run(rank: int, world_size: int, data: dict[str, Tensor]) -> dict[str, list]:
    """The objective with a FixedNet: warm-up step 0, selection steps 1, 2; loss, parts, grads, banks."""
    cfg = world_config()
    objective = objective_with_fixed_net(cfg, data["cameras"], seed=3)
    banks = objective.attach_banks(torch.device("cpu"), rank, world_size)
    objective.set_steps_per_epoch(1)
    own = torch.arange(banks.shards.start, banks.shards.stop)
    objective.initialise_banks([(own, data["init"][own])])
    out: dict[str, list] = {k: [] for k in ("loss", "loss_global", "loss_local", "grads", "mixture")}
    per_rank = BATCH // world_size
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    for step in range(STEPS):
        index = data["index"][step, mine]
        batch = {"image": data["features"][step, mine], "index": index, "camid": data["cameras"][index]}
        objective.before_step(step, {})
        result = objective(batch)
        objective.zero_grad()
        result.loss.backward()
        out["loss"].append(result.loss.detach())
        out["loss_global"].append(result.parts["loss_global"])
        out["loss_local"].append(result.parts["loss_local"])
        out["grads"].append([p.grad.clone() for p in objective.net.parameters()])
        out["mixture"].append(banks.mixture.clone())
    return out


def scenario(rank: int, world_size: int) -> dict[str, dict[str, list]]:
    """Everything the 1-vs-2-rank test compares, from this rank (B = 6 / world_size anchors per step)."""
    data = world_data()
    return {
        "float32": _bank_run(rank, world_size, "float32", data),
        "bfloat16": _bank_run(rank, world_size, "bfloat16", data),
        "float16": _bank_run(rank, world_size, "float16", data),
        "objective": _objective_run(rank, world_size, data),
    }


def spawn_two_ranks(out: Path) -> list[dict[str, dict[str, list]]]:
    """Run :func:`scenario` on 2 gloo ranks (spawned processes); returns their results, rank order."""
    return run_on_two_ranks(scenario, out)
