"""The selective-contrastive memory banks (reidscale/objectives/selective/banks.py; the row sharding is
tested in tests/sharded/) against an independent truth: the formulas of docs/methods.md as float64 loops
(tests/support/selective_world.py), hand-worked numbers, and one rank holding every row vs two gloo ranks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from reidscale.objectives.selective import Anchors, SelectiveBanks, SelectiveConfig
from tests.support.selective_world import (
    BATCH,
    STEPS,
    brute_distance,
    brute_scores,
    brute_select,
    brute_update,
    scenario,
    spawn_two_ranks,
    unit,
)

TINY = {"global_dim": 16, "local_dim": 4, "num_stripes": 4}


def tiny_config(**changes: object) -> SelectiveConfig:
    return SelectiveConfig(**{**TINY, **changes})


def filled_banks(
    cfg: SelectiveConfig, bank_g, bank_l, cameras, rank: int = 0, world: int = 1
) -> SelectiveBanks:
    """Banks whose own rows hold bank_g [N, Dg] and bank_l [N, S, Dl]."""
    banks = SelectiveBanks(bank_g.shape[0], cameras, cfg, rank=rank, world_size=world)
    own = torch.arange(banks.shards.start, banks.shards.stop)
    banks.initialise_rows(own, bank_g[own], bank_l[own])
    return banks


# ------------------------------------------------------------------------------------------- selection


def selection_world(
    rows: int, batch: int, seed: int = 0, duplicate: tuple[int, int] | None = None
) -> tuple[SelectiveConfig, Tensor, Tensor, Tensor, Anchors]:
    """Random unit bank rows (optionally row duplicate[1] := row duplicate[0]), cameras, and anchors that are
    noisy copies of their own rows (so self would rank first without the exclusion)."""
    cfg, gen = tiny_config(cam_penalty=0.3), torch.Generator().manual_seed(seed)
    bank_g, bank_l = unit((rows, 16), gen), unit((rows, 4, 4), gen)
    if duplicate is not None:
        bank_g[duplicate[1]], bank_l[duplicate[1]] = bank_g[duplicate[0]], bank_l[duplicate[0]]
    cameras = torch.randint(0, 3, (rows,), generator=gen)
    index = torch.randperm(rows, generator=gen)[:batch]
    g = F.normalize(bank_g[index] + 0.3 * torch.randn(batch, 16, generator=gen), dim=1)
    stripes = F.normalize(bank_l[index] + 0.3 * torch.randn(batch, 4, 4, generator=gen), dim=2)
    return cfg, bank_g, bank_l, cameras, Anchors(index, cameras[index], g, stripes)


@pytest.mark.parametrize("k", [1, 7, 19, 25])  # 19 = N − 1; 25 > N − 1 pads with −1
def test_select_matches_brute_force_distance_sort(k: int) -> None:
    cfg, bank_g, bank_l, cameras, anchors = selection_world(rows=20, batch=6)
    banks = filled_banks(cfg, bank_g, bank_l, cameras)
    scores, ids = banks.select(anchors, k)
    dist = brute_distance(anchors.g, anchors.stripes, anchors.cameras, bank_g, bank_l, cameras, cfg)
    assert torch.equal(ids, brute_select(dist, anchors.index, k))
    valid = ids >= 0
    assert int(valid.sum(1).min()) == min(k, 19) and not bool((ids == anchors.index[:, None]).any())
    expected = 1 - dist.gather(1, ids.clamp(min=0)) / 2
    torch.testing.assert_close(scores[valid].double(), expected[valid], rtol=0, atol=2e-6)
    assert bool(torch.isneginf(scores[~valid]).all())


def test_select_breaks_exact_ties_by_lower_row() -> None:
    cfg, bank_g, bank_l, cameras, anchors = selection_world(rows=12, batch=4, seed=3, duplicate=(9, 2))
    cameras[2] = cameras[9]  # identical rows, identical camera term: an exact tie between rows 2 and 9
    anchors.cameras = cameras[anchors.index]
    banks = filled_banks(cfg, bank_g, bank_l, cameras)
    scores, ids = banks.select(anchors, 11)
    dist = brute_distance(anchors.g, anchors.stripes, anchors.cameras, bank_g, bank_l, cameras, cfg)
    assert torch.equal(ids, brute_select(dist, anchors.index, 11))
    for b in range(4):
        if int(anchors.index[b]) not in (2, 9):
            pos = ids[b].tolist()
            assert pos.index(2) + 1 == pos.index(9)  # adjacent, lower row first
            assert scores[b, pos.index(2)] == scores[b, pos.index(9)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_select_on_a_low_precision_bank_matches_brute_force_on_the_rounded_bank(dtype: str) -> None:
    cfg, bank_g, bank_l, cameras, anchors = selection_world(rows=30, batch=5, seed=1)
    cfg.bank_dtype = dtype
    banks = filled_banks(cfg, bank_g, bank_l, cameras)
    rounded_g, rounded_l = (t.to(getattr(torch, dtype)).float() for t in (bank_g, bank_l))
    scores, ids = banks.select(anchors, 12)
    truth = brute_scores(anchors.g, anchors.stripes, anchors.cameras, rounded_g, rounded_l, cameras, cfg)
    assert torch.equal(ids, brute_select(-truth, anchors.index, 12))
    torch.testing.assert_close(scores.double(), truth.gather(1, ids), rtol=0, atol=2e-6)
    exact = brute_scores(anchors.g, anchors.stripes, anchors.cameras, bank_g, bank_l, cameras, cfg)
    assert not torch.equal(truth, exact)  # the rounding is real: the test sees the stored bank


# --------------------------------------------------------------------------------------------- update


def test_update_by_hand_two_dimensional_rows() -> None:
    """Dg = Dl = 2, S = 1, m = m' = 0.5, N = 3; anchors rows 0 and 1 both with positive row 2."""
    cfg = SelectiveConfig(global_dim=2, local_dim=2, num_stripes=1, num_positives=1, num_negatives=1)
    banks = SelectiveBanks(3, torch.zeros(3, dtype=torch.int64), cfg)
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    banks.initialise_rows(torch.arange(3), torch.stack([e1, e1, e2]), torch.stack([e2, e2, e1])[:, None])
    # initial mixture = normalise(g + l_cat): rows 0, 1 = (1, 1)/√2, row 2 = (1, 1)/√2
    r = 1 / math.sqrt(2)
    anchors = Anchors(
        torch.tensor([0, 1]),
        torch.zeros(2, dtype=torch.int64),
        torch.stack([e2, e1]),
        torch.stack([e2, e1])[:, None],
    )
    banks.update(anchors, torch.tensor([[2], [-1]]))
    torch.testing.assert_close(banks.global_bank(), torch.tensor([[r, r], [1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(banks.local_bank(0), torch.tensor([[0.0, 1.0], [r, r], [1.0, 0.0]]))
    # Mixture, g pass: row 0 ← n((r, r) + (0, 1)); row 2 ← n((r, r) + (0, 1)); row 1 ← n((r, r) + (1, 0)).
    # l_cat pass (l_cat = stripes here): row 0 ← n(row0 + (0, 1)); row 2 ← n(row2 + (0, 1));
    # row 1 ← n(row1 + (1, 0)).
    a = F.normalize(torch.tensor([r, r + 1]), dim=0)
    a = F.normalize(a + torch.tensor([0.0, 1.0]), dim=0)
    b = F.normalize(torch.tensor([r + 1, r]), dim=0)
    b = F.normalize(b + torch.tensor([1.0, 0.0]), dim=0)
    torch.testing.assert_close(banks.mixture, torch.stack([a, b, a]))
    assert bool(torch.isclose(a[0], torch.tensor(0.1950903), atol=1e-6))  # the hand-worked value itself


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_update_matches_sequential_brute_force(dtype: str) -> None:
    """Shared positives, an anchor that is another anchor's positive, −1 slots, and a repeated anchor."""
    cfg = tiny_config(num_positives=3, bank_momentum=0.3, mixture_momentum=0.6, bank_dtype=dtype)
    gen = torch.Generator().manual_seed(5)
    rows = 11
    bank_g, bank_l = unit((rows, 16), gen), unit((rows, 4, 4), gen)
    banks = filled_banks(cfg, bank_g, bank_l, torch.zeros(rows, dtype=torch.int64))
    before_g = banks.global_bank().float().clone()  # .float() of a float32 bank is the bank itself
    before_l = banks.selection[:, 16:].float().clone().view(rows, 4, 4)
    before_m = banks.mixture.float().clone()
    index = torch.tensor([4, 7, 0, 4])
    positives = torch.tensor([[7, 2, 9], [2, -1, 9], [9, 4, -1], [-1, -1, 2]])
    g, stripes = unit((4, 16), gen), unit((4, 4, 4), gen)
    banks.update(Anchors(index, torch.zeros(4, dtype=torch.int64), g, stripes), positives)
    want_g, want_l, want_m = brute_update(before_g, before_l, before_m, index, g, stripes, positives, cfg)
    tol = {"float32": 1e-6, "bfloat16": 8e-3}[dtype]
    torch.testing.assert_close(banks.global_bank().double(), want_g, rtol=0, atol=tol)
    torch.testing.assert_close(banks.selection[:, 16:].double().view(rows, 4, 4), want_l, rtol=0, atol=tol)
    torch.testing.assert_close(banks.mixture.double(), want_m, rtol=0, atol=tol)
    untouched = [1, 3, 5, 6, 8, 10]
    assert torch.equal(banks.mixture[untouched].float(), before_m[untouched])
    assert torch.equal(banks.selection[[2, 9, *untouched]].float()[:, :16], before_g[[2, 9, *untouched]])


def test_update_order_matters_and_is_the_documented_one() -> None:
    """Applying x = l_cat before x = g (or positives before self) gives a different bank: the brute force
    with the documented order is the only one the code matches."""
    cfg = tiny_config(num_positives=1)
    gen = torch.Generator().manual_seed(6)
    bank_g, bank_l = unit((4, 16), gen), unit((4, 4, 4), gen)
    banks = filled_banks(cfg, bank_g, bank_l, torch.zeros(4, dtype=torch.int64))
    before = banks.mixture.clone()
    index, positives = torch.tensor([0, 1]), torch.tensor([[1], [0]])
    g, stripes = unit((2, 16), gen), unit((2, 4, 4), gen)
    banks.update(Anchors(index, torch.zeros(2, dtype=torch.int64), g, stripes), positives)
    _, _, want = brute_update(bank_g, bank_l, before, index, g, stripes, positives, cfg)
    swapped = torch.tensor([[0], [1]])  # the positives of the flipped anchors
    _, _, other = brute_update(
        bank_g, bank_l, before, index.flip(0), g.flip(0), stripes.flip(0), swapped, cfg
    )
    torch.testing.assert_close(banks.mixture.double(), want, rtol=0, atol=1e-6)
    assert (want - other).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------- random rows


@pytest.mark.parametrize(("rows", "count"), [(50, 5), (12, 5), (6, 10), (2, 3)])
def test_random_rows_are_distinct_others_in_range(rows: int, count: int) -> None:
    banks = SelectiveBanks(rows, torch.zeros(rows, dtype=torch.int64), tiny_config())
    index = torch.arange(rows)
    drawn = banks.random_rows(index, count, seed=1, epoch=0)
    assert drawn.shape == (rows, count) and drawn.dtype == torch.int64
    for anchor, row in zip(index.tolist(), drawn.tolist(), strict=True):
        valid = [v for v in row if v >= 0]
        assert row[len(valid) :] == [-1] * (count - len(valid))  # padding at the end only
        assert len(valid) == min(count, rows - 1) and len(set(valid)) == len(valid)
        assert anchor not in valid and all(0 <= v < rows for v in valid)
        if count >= rows - 1:
            assert sorted(valid) == [v for v in range(rows) if v != anchor]


def test_random_rows_depend_on_anchor_seed_epoch_only() -> None:
    rows = 40
    cameras = torch.zeros(rows, dtype=torch.int64)
    one = SelectiveBanks(rows, cameras, tiny_config())
    other_rank = SelectiveBanks(rows, cameras, tiny_config(), rank=1, world_size=2)
    first = one.random_rows(torch.tensor([3, 17, 39, 0]), 6, seed=4, epoch=2)
    again = other_rank.random_rows(torch.tensor([39, 5, 3]), 6, seed=4, epoch=2)
    assert torch.equal(first[2], again[0]) and torch.equal(first[0], again[2])
    next_epoch = one.random_rows(torch.tensor([3, 17, 39, 0]), 6, seed=4, epoch=3)
    other_seed = one.random_rows(torch.tensor([3, 17, 39, 0]), 6, seed=5, epoch=2)
    assert all(not torch.equal(first[b], next_epoch[b]) for b in range(4))
    assert all(not torch.equal(first[b], other_seed[b]) for b in range(4))


def test_random_rows_cover_the_bank() -> None:
    """Over many anchors every other row is drawn, roughly uniformly (no row systematically skipped)."""
    rows = 30
    banks = SelectiveBanks(rows, torch.zeros(rows, dtype=torch.int64), tiny_config())
    drawn = torch.cat([banks.random_rows(torch.arange(rows), 5, seed=0, epoch=e) for e in range(20)])
    counts = torch.bincount(drawn.flatten(), minlength=rows)
    assert int(counts.min()) > 0.4 * counts.float().mean()  # expected 100 each; a skipped row gives 0


# ----------------------------------------------------------------------------------------- checkpoint


def test_bank_state_round_trip_and_refusal(tmp_path: Path) -> None:
    cfg, bank_g, bank_l, cameras, _ = selection_world(rows=9, batch=3)
    banks = filled_banks(cfg, bank_g, bank_l, cameras, rank=1, world=2)
    torch.save(banks.state_dict(), tmp_path / "shard.pt")
    state = torch.load(tmp_path / "shard.pt")
    fresh = SelectiveBanks(9, cameras, cfg, rank=1, world_size=2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.selection, banks.selection) and torch.equal(fresh.mixture, banks.mixture)
    assert bool(fresh.initialised.all())
    with pytest.raises(ValueError, match="rank"):
        SelectiveBanks(9, cameras, cfg, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="world size"):
        SelectiveBanks(9, cameras, cfg).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        fresh.load_state_dict({**state, "version": 99})


def test_banks_reject_bad_arguments() -> None:
    cfg = tiny_config()
    with pytest.raises(ValueError, match="cameras"):
        SelectiveBanks(5, torch.zeros(4, dtype=torch.int64), cfg)
    banks = SelectiveBanks(6, torch.zeros(6, dtype=torch.int64), cfg, rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"index holds rows outside"):
        banks.initialise_rows(torch.tensor([1, 4]), torch.zeros(2, 16), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="index must be a 1-D int64"):
        banks.initialise_rows(torch.tensor([1.0]), torch.zeros(1, 16), torch.zeros(1, 4, 4))


# ------------------------------------------------------------------------------------- 1 vs 2 ranks


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    return scenario(0, 1), spawn_two_ranks(tmp_path_factory.mktemp("selective_world"))


def _joined(ranks: list[dict], part: str, key: str, step: int) -> torch.Tensor:
    return torch.cat([rank[part][key][step] for rank in ranks])


@pytest.mark.multiproc
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_two_ranks_select_fetch_and_update_like_one_rank(worlds, dtype: str) -> None:
    """N = 13 rows sharded 6 | 7, global batch 6 split 3 | 3, three steps of select → fetch → update: the
    same selection (ties, −1 padding), the same fetched rows and bitwise the same banks. Scores may differ in
    the last bit (a [6, 13] matmul vs [6, 6] and [6, 7] ones)."""
    one, two = worlds
    for step in range(STEPS):
        for key in ("ids", "ids_padded", "rows", "selection", "mixture"):
            assert torch.equal(_joined(two, dtype, key, step), one[dtype][key][step]), (key, step)
        torch.testing.assert_close(
            _joined(two, dtype, "scores", step), one[dtype]["scores"][step], rtol=0, atol=1e-6
        )
        assert bool((one[dtype]["ids_padded"][step][:, 12:] == -1).all())  # k = 15 > N − 1 = 12
    changed = one[dtype]["mixture"][-1] != one[dtype]["mixture"][0]
    assert bool(changed.any(dim=1).sum() >= 6)  # the updates did something to compare


@pytest.mark.multiproc
def test_two_ranks_objective_steps_like_one_rank(worlds) -> None:
    """Warm-up step 0 and selection steps 1–2 of the objective: the 1-rank loss over 6 anchors is the
    mean of the two ranks' losses over 3 each, so are the gradients, and the mixture banks agree (to
    rounding: each rank's network runs on 3 images, the single rank's on 6)."""
    one, two = worlds
    for step in range(STEPS):
        for key in ("loss", "loss_global", "loss_local"):
            mean = (two[0]["objective"][key][step] + two[1]["objective"][key][step]) / 2
            torch.testing.assert_close(mean, one["objective"][key][step], rtol=0, atol=1e-6)
        for grad, grad0, grad1 in zip(*(w["objective"]["grads"][step] for w in [one, *two]), strict=True):
            torch.testing.assert_close((grad0 + grad1) / 2, grad, rtol=0, atol=1e-6)
        mixture = _joined(two, "objective", "mixture", step)
        torch.testing.assert_close(mixture, one["objective"]["mixture"][step], rtol=0, atol=1e-6)
    assert BATCH % 2 == 0 and one["objective"]["loss"][1] != one["objective"]["loss"][0]
