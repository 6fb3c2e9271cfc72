"""The selective-contrastive objective, heads and config (reidscale/objectives/selective/objective.py,
heads.py, config.py) against an independent truth: the loss, selection and updates of docs/methods.md
written out in float64 (tests/support/selective_world.py), stripes and heads recomputed by hand."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidscale.kernels.support import BANK_TOPK_MAX_K as MAX_K
from reidscale.models.registry import Backbone, create_backbone
from reidscale.objectives.base import TrainingContext
from reidscale.objectives.selective import (
    SelectiveConfig,
    SelectiveContrastive,
    SelectiveFeatures,
    SelectiveNet,
    local_concat,
)
from tests.support.selective_world import (
    MapBackbone,
    brute_distance,
    brute_loss,
    brute_select,
    brute_update,
    objective_with_fixed_net,
)

TINY = {"global_dim": 16, "local_dim": 4, "num_stripes": 4}
WIDTH = 16 + 4 * 4


def tiny_config(**changes: object) -> SelectiveConfig:
    return SelectiveConfig(**{**TINY, **changes})


def world(rows: int, batch: int, seed: int = 0) -> dict[str, Tensor]:
    """Cameras, initial raw features [N, WIDTH] and a batch of anchors with features near their rows."""
    gen = torch.Generator().manual_seed(seed)
    init = torch.randn(rows, WIDTH, generator=gen)
    index = torch.randperm(rows, generator=gen)[:batch]
    return {
        "cameras": torch.randint(0, 3, (rows,), generator=gen),
        "init": init,
        "index": index,
        "image": init[index] + 0.5 * torch.randn(batch, WIDTH, generator=gen),
    }


def ready_objective(
    cfg: SelectiveConfig, data: dict[str, Tensor], steps_per_epoch: int = 1
) -> SelectiveContrastive:
    objective = objective_with_fixed_net(cfg, data["cameras"], seed=1)
    objective.attach_banks(torch.device("cpu"))
    objective.set_steps_per_epoch(steps_per_epoch)
    rows = data["init"].shape[0]
    objective.initialise_banks(
        [(torch.arange(rows)[:5], data["init"][:5]), (torch.arange(rows)[5:], data["init"][5:])]
    )
    return objective


def batch_of(data: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"image": data["image"], "index": data["index"], "camid": data["cameras"][data["index"]]}


def expected_step(
    objective: SelectiveContrastive, data: dict[str, Tensor], candidates: list[list[int]], num_positives: int
) -> dict[str, object]:
    """The hand loss (autograd through a copy of the net) for the given candidate lists [self, P, negatives],
    from the mixture bank as it is NOW (before the step); also the banks the step must leave."""
    cfg, banks = objective.config, objective.banks
    net = copy.deepcopy(objective.net)
    g, stripes = net(data["image"])
    l_cat = stripes.flatten(1) / math.sqrt(cfg.num_stripes)
    weights = [
        [cfg.self_weight, *[cfg.positive_weight] * num_positives, *[0.0] * (len(c) - 1 - num_positives)]
        for c in candidates
    ]
    loss_l = brute_loss(l_cat, banks.mixture, candidates, weights, cfg.temperature)
    loss_g = brute_loss(g, banks.mixture, candidates, weights, cfg.temperature)
    loss = cfg.local_weight * loss_l + (1 - cfg.local_weight) * loss_g
    loss.backward()
    positives = torch.tensor([c[1 : 1 + num_positives] for c in candidates], dtype=torch.int64)
    positives = positives.view(len(candidates), num_positives)
    rows = data["init"].shape[0]
    bank_l = banks.selection[:, 16:].reshape(rows, 4, 4)
    banks_after = brute_update(
        banks.global_bank(),
        bank_l,
        banks.mixture,
        data["index"],
        g.detach(),
        stripes.detach(),
        positives,
        cfg,
    )
    grads = [p.grad for p in net.parameters()]
    return {
        "loss": loss.detach(),
        "loss_g": loss_g.detach(),
        "loss_l": loss_l.detach(),
        "grads": grads,
        "banks": banks_after,
        "g": g.detach(),
        "stripes": stripes.detach(),
    }


def check_step(objective: SelectiveContrastive, data: dict[str, Tensor], want: dict) -> None:
    objective.zero_grad()
    out = objective(batch_of(data))
    out.loss.backward()
    torch.testing.assert_close(out.loss.double(), want["loss"], rtol=0, atol=2e-6)
    torch.testing.assert_close(out.parts["loss_global"].double(), want["loss_g"], rtol=0, atol=2e-6)
    torch.testing.assert_close(out.parts["loss_local"].double(), want["loss_l"], rtol=0, atol=2e-6)
    for got, expected in zip(objective.net.parameters(), want["grads"], strict=True):
        torch.testing.assert_close(got.grad.double(), expected.double(), rtol=1e-4, atol=1e-5)
    bank_g, _, mixture = want["banks"]
    torch.testing.assert_close(objective.banks.global_bank().double(), bank_g, rtol=0, atol=1e-6)
    torch.testing.assert_close(objective.banks.mixture.double(), mixture, rtol=0, atol=1e-6)
    assert out.num_images == len(data["index"])


def selection_candidates(
    objective: SelectiveContrastive, data: dict[str, Tensor], g: Tensor, stripes: Tensor
) -> list[list[int]]:
    """[self] + the brute-force top-(P + N_neg) rows by the selection distance, per anchor."""
    cfg, banks, rows = objective.config, objective.banks, data["init"].shape[0]
    bank_l = banks.selection[:, 16:].reshape(rows, 4, 4)
    index = data["index"]
    dist = brute_distance(
        g, stripes, data["cameras"][index], banks.global_bank(), bank_l, data["cameras"], cfg
    )
    chosen = brute_select(dist, index, cfg.selection_k)
    return [[int(index[b])] + [c for c in chosen[b].tolist() if c >= 0] for b in range(len(index))]


# ---------------------------------------------------------------------------------------- the loss


def test_warmup_step_loss_gradient_and_update_by_hand() -> None:
    """Warm-up: positives = self only; with num_negatives ≥ N − 1 the random negatives are every other row
    (their order does not matter: they weigh 0), so the candidate set is known independently."""
    data = world(rows=9, batch=4)
    cfg = tiny_config(num_positives=2, num_negatives=10, warmup_epochs=1)
    objective = ready_objective(cfg, data)
    objective.before_step(0, {})
    assert objective.in_warmup
    candidates = [[int(i)] + [n for n in range(9) if n != int(i)] for i in data["index"]]
    check_step(objective, data, expected_step(objective, data, candidates, num_positives=0))


def test_selection_step_loss_gradient_and_update_by_hand() -> None:
    """After the warm-up: P = 2 nearest rows weigh w_p, the next 5 are the negatives (of N − 1 = 11)."""
    data = world(rows=12, batch=5, seed=2)
    cfg = tiny_config(num_positives=2, num_negatives=5, warmup_epochs=0, cam_penalty=0.2)
    objective = ready_objective(cfg, data)
    objective.before_step(0, {})
    assert not objective.in_warmup
    g, stripes = copy.deepcopy(objective.net)(data["image"])
    candidates = selection_candidates(objective, data, g.detach(), stripes.detach())
    assert all(len(c) == 8 for c in candidates)
    check_step(objective, data, expected_step(objective, data, candidates, num_positives=2))


def test_warmup_ends_at_warmup_epochs_times_steps_per_epoch() -> None:
    """warmup_epochs = 2, 3 steps per epoch: step 5 is the last warm-up step, step 6 selects. With
    num_negatives = N − 1 both candidate sets hold every row; only the positive weights tell them apart."""
    data = world(rows=8, batch=3, seed=4)
    cfg = tiny_config(num_positives=2, num_negatives=7, warmup_epochs=2)
    objective = ready_objective(cfg, data, steps_per_epoch=3)
    for step, warm in ((5, True), (6, False)):
        objective.before_step(step, {})
        assert objective.in_warmup is warm and objective.epoch == step // 3
        g, stripes = copy.deepcopy(objective.net)(data["image"])
        candidates = selection_candidates(objective, data, g.detach(), stripes.detach())
        other = expected_step(objective, data, candidates, num_positives=2 if warm else 0)
        want = expected_step(objective, data, candidates, num_positives=0 if warm else 2)
        assert abs(float(other["loss"]) - float(want["loss"])) > 1e-3  # the two phases differ here
        check_step(objective, data, want)


def test_warmup_negatives_are_the_random_rows_of_the_epoch() -> None:
    """With fewer negatives than rows, the warm-up candidates are [self] + random_rows(seed, epoch) (whose
    properties test_selective_banks checks): the loss matches that set and not the next epoch's."""
    data = world(rows=30, batch=4, seed=5)
    cfg = tiny_config(num_positives=2, num_negatives=4, warmup_epochs=3)
    objective = ready_objective(cfg, data)
    objective.before_step(1, {})
    draw = objective.banks.random_rows(data["index"], 4, objective.seed, 1)
    other = objective.banks.random_rows(data["index"], 4, objective.seed, 2)
    candidates = [[int(i), *row] for i, row in zip(data["index"], draw.tolist(), strict=True)]
    wrong = [[int(i), *row] for i, row in zip(data["index"], other.tolist(), strict=True)]
    wrong_loss = expected_step(objective, data, wrong, 0)["loss"]
    assert abs(float(wrong_loss) - float(expected_step(objective, data, candidates, 0)["loss"])) > 1e-4
    check_step(objective, data, expected_step(objective, data, candidates, num_positives=0))


def test_gradients_reach_the_backbone_as_plain_autograd_says() -> None:
    """A real SelectiveNet (conv backbone, BN heads, train mode): the objective's parameter gradients equal
    autograd of the hand loss through a copy of the network, and every backbone parameter gets one."""
    torch.manual_seed(0)
    rows, batch = 10, 4
    cfg = tiny_config(num_positives=2, num_negatives=4, warmup_epochs=0)
    gen = torch.Generator().manual_seed(8)
    images = torch.randn(rows, 3, 8, 4, generator=gen)
    cameras = torch.randint(0, 2, (rows,), generator=gen)
    objective = SelectiveContrastive(MapBackbone(), cfg, cameras)
    objective.attach_banks(torch.device("cpu"))
    objective.initialise_banks([(torch.arange(rows), images)])
    index = torch.tensor([7, 1, 4, 9])
    moved = images[index] + 0.1 * torch.randn(batch, 3, 8, 4, generator=gen)
    data = {"init": images, "index": index, "image": moved, "cameras": cameras}
    objective.train()
    objective.before_step(0, {})
    g, stripes = copy.deepcopy(objective.net)(data["image"])
    candidates = selection_candidates(objective, data, g.detach(), stripes.detach())
    want = expected_step(objective, data, candidates, num_positives=2)
    check_step(objective, data, want)
    for name, parameter in objective.net.backbone.named_parameters():
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0, name


# ------------------------------------------------------------------------------ state and failures


def test_extra_state_round_trip(tmp_path: Path) -> None:
    data = world(rows=9, batch=3)
    cfg = tiny_config(num_positives=1, num_negatives=3, warmup_epochs=0)
    objective = ready_objective(cfg, data)
    objective.before_step(0, {})
    before = objective.banks.mixture.clone()
    objective(batch_of(data))
    assert not torch.equal(objective.banks.mixture, before)  # the step changed the banks it saves
    torch.save(objective.extra_state(), tmp_path / "state.pt")
    fresh = objective_with_fixed_net(cfg, data["cameras"])
    fresh.attach_banks(torch.device("cpu"))
    fresh.load_extra_state(torch.load(tmp_path / "state.pt"))
    for name in ("selection", "mixture", "initialised"):
        assert torch.equal(getattr(fresh.banks, name), getattr(objective.banks, name)), name
    with pytest.raises(ValueError, match="banks"):
        fresh.load_extra_state({"bank": 1})


def test_loading_another_ranks_shard_is_refused() -> None:
    data = world(rows=9, batch=3)
    cfg = tiny_config()
    saved = objective_with_fixed_net(cfg, data["cameras"])
    saved.attach_banks(torch.device("cpu"), rank=1, world_size=2)
    state = saved.extra_state()
    for rank, world_size in ((0, 2), (0, 1), (1, 3)):
        other = objective_with_fixed_net(cfg, data["cameras"])
        other.attach_banks(torch.device("cpu"), rank=rank, world_size=world_size)
        with pytest.raises(ValueError, match=r"bank shard is \(rows, world size, rank\) = \(9, 2, 1\)"):
            other.load_extra_state(state)
    narrower = SelectiveConfig(**{**TINY, "global_dim": 8, "local_dim": 2})
    other = objective_with_fixed_net(narrower, data["cameras"])
    other.attach_banks(torch.device("cpu"), rank=1, world_size=2)
    with pytest.raises(ValueError, match="bank selection: saved shape"):
        other.load_extra_state(state)


def test_use_before_attach_and_incomplete_initialisation_raise() -> None:
    data = world(rows=9, batch=3)
    objective = objective_with_fixed_net(tiny_config(), data["cameras"])
    with pytest.raises(RuntimeError, match="attach_banks"):
        objective(batch_of(data))
    with pytest.raises(RuntimeError, match="attach_banks"):
        objective.extra_state()
    objective.attach_banks(torch.device("cpu"))
    with pytest.raises(ValueError, match="left memory-bank rows empty"):
        objective.initialise_banks([(torch.arange(8), data["init"][:8])])
    assert objective.initialise_banks([(torch.tensor([8]), data["init"][8:])]) == 1  # now all 9 are filled
    with pytest.raises(ValueError, match="steps per epoch"):
        objective.set_steps_per_epoch(0)


BAD_FIELDS = [
    ("global_dim", 0),
    ("local_dim", 0),
    ("num_stripes", 0),
    ("init_batch_size", 0),
    ("num_positives", -1),
    ("num_negatives", 0),
    ("warmup_epochs", -1),
    ("lambda_global", 1.5),
    ("local_weight", -0.1),
    ("bank_momentum", 1.01),
    ("mixture_momentum", -0.5),
    ("cam_penalty", -0.01),
    ("self_weight", -1.0),
    ("positive_weight", -1.0),
    ("temperature", 0.0),
    ("bank_dtype", "float64"),
    ("test_feature", "mean"),
    ("local_dim", 128),  # 8 stripes × 128 ≠ the 2048-wide mixture rows
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"scl\.{field}\b"):
        SelectiveConfig(**{field: value})


def test_config_rejects_a_selection_beyond_the_topk_limit() -> None:
    """P + N_neg rows are selected by one bank_topk call, which serves k <= MAX_K (4096): a larger value
    must be refused when the config is read, not at the first step after the warm-up epochs."""
    SelectiveConfig(num_positives=7, num_negatives=MAX_K - 7)  # the largest selection that runs
    with pytest.raises(ValueError, match=r"scl\.num_(positives|negatives)"):
        SelectiveConfig(num_positives=7, num_negatives=MAX_K)


def test_config_defaults_are_the_papers() -> None:
    cfg = SelectiveConfig()
    assert (cfg.global_dim, cfg.local_dim, cfg.num_stripes, cfg.num_positives, cfg.num_negatives) == (
        2048,
        256,
        8,
        7,
        500,
    )
    assert (cfg.warmup_epochs, cfg.lambda_global, cfg.self_weight, cfg.positive_weight) == (
        3,
        0.5,
        0.5,
        0.125,
    )
    assert (cfg.local_weight, cfg.temperature) == (0.3, 0.1)
    assert 0.03 <= cfg.cam_penalty <= 0.05 and cfg.selection_k == 507
    with pytest.raises(ValueError, match="scl"):
        SelectiveConfig(self_weight=0.0, positive_weight=0.0)


# ------------------------------------------------------------------------------------------- heads


def eval_bn(bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def randomised_net(cfg: SelectiveConfig) -> SelectiveNet:
    torch.manual_seed(2)
    net = SelectiveNet(MapBackbone(), cfg)
    for bn in [net.global_bn, *net.local_bn]:
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.parametrize(
    ("height", "stripe_rows"), [(8, [(0, 2), (2, 4), (4, 6), (6, 8)]), (6, [(0, 2), (1, 3), (3, 5), (4, 6)])]
)
def test_heads_by_hand(height: int, stripe_rows: list[tuple[int, int]]) -> None:
    """Stripe k = mean of map rows [floor(k·h/S), ceil((k+1)·h/S)) (overlapping when S ∤ h), then Linear →
    BN → L2; g = L2(BN(Linear(mean of the map)))."""
    cfg = tiny_config()
    net = randomised_net(cfg)
    images = torch.randn(3, 3, height, 4)
    g, stripes = net(images)
    assert g.shape == (3, 16) and stripes.shape == (3, 4, 4)
    fmap = net.backbone.forward_features(images)
    want_g = F.normalize(eval_bn(net.global_bn, net.global_fc(fmap.mean(dim=(2, 3)))), dim=1)
    torch.testing.assert_close(g, want_g)
    for k, (top, bottom) in enumerate(stripe_rows):
        pooled = fmap[:, :, top:bottom, :].mean(dim=(2, 3))
        want = F.normalize(eval_bn(net.local_bn[k], net.local_fc[k](pooled)), dim=1)
        torch.testing.assert_close(stripes[:, k], want)
    torch.testing.assert_close(g.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(stripes.norm(dim=2), torch.ones(3, 4))


def test_feature_model_variants() -> None:
    cfg = tiny_config()
    net = randomised_net(cfg)
    images = torch.randn(2, 3, 8, 4)
    g, stripes = net(images)
    l_cat = stripes.flatten(1) / 2  # S = 4 unit stripes: ‖concat‖ = 2
    torch.testing.assert_close(SelectiveFeatures(net, "global")(images), g)
    torch.testing.assert_close(SelectiveFeatures(net, "local")(images), l_cat)
    torch.testing.assert_close(
        SelectiveFeatures(net, "concat")(images), torch.cat([g, l_cat], 1) / math.sqrt(2)
    )
    objective = SelectiveContrastive(
        MapBackbone(), tiny_config(test_feature="local"), torch.zeros(4, dtype=torch.int64)
    )
    assert objective.feature_model().which == "local" and objective.feature_model().net is objective.net
    with pytest.raises(ValueError, match="which"):
        SelectiveFeatures(net, "mean")


def test_heads_on_resnet18_and_bad_backbones() -> None:
    cfg = tiny_config()
    net = SelectiveNet(create_backbone("resnet18", img_size=(64, 32)), cfg).eval()
    g, stripes = net(torch.randn(2, 3, 64, 32))
    assert g.shape == (2, 16) and stripes.shape == (2, 4, 4)
    torch.testing.assert_close(stripes.norm(dim=2), torch.ones(2, 4))

    class Tokens(Backbone):
        feature_dim, img_size = 4, (8, 4)

        def forward_features(self, images: Tensor) -> Tensor:
            return images.flatten(2).transpose(1, 2)[:, :, :1].expand(-1, -1, 4)

        def pool_features(self, features: Tensor) -> Tensor:
            return features.mean(1)

    with pytest.raises(ValueError, match=r"convolutional feature map \[B, C, h, w\]; Tokens"):
        SelectiveNet(Tokens(), cfg)(torch.randn(2, 3, 8, 4))
    with pytest.raises(ValueError, match="no feature_dim"):
        SelectiveNet(nn.Identity(), cfg)


def test_initialisation_pass_uses_batch_statistics_and_leaves_running_statistics() -> None:
    """The decided initialisation: BatchNorm normalises with the batch's statistics (as in training), the
    running statistics and counters stay as they were, the rows hold those features, M = normalise(g + l_cat).
    """
    cfg = tiny_config()
    torch.manual_seed(3)
    objective = SelectiveContrastive(MapBackbone(), cfg, torch.zeros(6, dtype=torch.int64))
    norms = [m for m in objective.net.modules() if isinstance(m, nn.BatchNorm1d)]
    for norm in norms:  # running statistics far from any batch's, so using them would show
        norm.running_mean.fill_(5.0)
        norm.running_var.fill_(9.0)
    before = copy.deepcopy(objective.net.state_dict())
    objective.net.eval()
    objective.attach_banks(torch.device("cpu"))
    images = torch.randn(6, 3, 8, 4)
    assert objective.initialise_banks([(torch.arange(3), images[:3]), (torch.arange(3, 6), images[3:])]) == 6
    for key, value in objective.net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not objective.net.training  # the mode it had before
    reference = copy.deepcopy(objective.net).train()
    for rows in (slice(0, 3), slice(3, 6)):
        with torch.no_grad():
            g, stripes = reference(images[rows])
        banks = objective.banks
        torch.testing.assert_close(banks.global_bank()[rows], g)
        torch.testing.assert_close(banks.local_bank(1)[rows], stripes[:, 1])
        torch.testing.assert_close(banks.mixture[rows], F.normalize(g + local_concat(stripes), dim=1))


def test_setup_builds_and_fills_the_banks_as_the_manual_calls_do() -> None:
    data = world(rows=9, batch=4)
    manual = ready_objective(tiny_config(), data, steps_per_epoch=3)
    lines: list[str] = []
    requested: list[tuple[int, int, int]] = []

    def init_batches(start: int, stop: int, batch: int):
        requested.append((start, stop, batch))
        rows = torch.arange(start, stop)
        return [(rows[i : i + batch], data["init"][rows[i : i + batch]]) for i in range(0, len(rows), batch)]

    objective = objective_with_fixed_net(tiny_config(init_batch_size=5), data["cameras"], seed=1)
    context = TrainingContext(
        torch.device("cpu"), steps_per_epoch=3, init_batches=init_batches, report=lines.append
    )
    objective.setup(context)
    assert requested == [(0, 9, 5)] and objective.steps_per_epoch == 3  # batches 0-4, 5-8 as by hand
    assert lines == ["memory banks: 9 rows in 1 shard(s) of float32; rank 0 initialised its 9 rows"]
    ours = objective.extra_state()["banks"]
    for name, value in manual.extra_state()["banks"].items():
        same = torch.equal(ours[name], value) if isinstance(value, Tensor) else ours[name] == value
        assert same, name


def test_setup_when_resuming_builds_empty_banks_and_reads_no_data() -> None:
    data = world(rows=9, batch=4)
    objective = objective_with_fixed_net(tiny_config(), data["cameras"], seed=1)
    objective.setup(TrainingContext(torch.device("cpu"), resuming=True, init_batches=None, report=print))
    assert objective.banks is not None and not objective.banks.all_initialised()
    fresh = objective_with_fixed_net(tiny_config(), data["cameras"], seed=1)
    with pytest.raises(ValueError, match=r"needs context\.init_batches to fill its banks"):
        fresh.setup(TrainingContext(torch.device("cpu")))
