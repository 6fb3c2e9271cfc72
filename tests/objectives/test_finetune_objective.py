"""BoT fine-tuning: losses against hand-worked numbers, torch's own CE and a loop brute force; the objective's
BNNeck and outputs; a plain-torch training run on a tiny synthetic Market folder raises mAP."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from reidscale.config.loader import build_config
from reidscale.data.datasets import load_dataset
from reidscale.data.finetune_set import finetune_train_data
from reidscale.evaluation.config import EvalConfig
from reidscale.evaluation.evaluator import evaluate_feature_set
from reidscale.evaluation.extract import extract_features
from reidscale.methods.finetuning import FinetuneConfig
from reidscale.objectives.base import StepOutput
from reidscale.objectives.finetune import BotConfig, FinetuneObjective
from reidscale.objectives.losses import batch_hard_triplet, cross_entropy_label_smooth
from tests.support.tiny_market import TinyBackbone, write_tiny_market


def brute_force_triplet(feats: torch.Tensor, pids: list[int], soft: bool, margin: float) -> torch.Tensor:
    """Anchor by anchor: farthest same-pid image (not itself), nearest other-pid image, then the loss."""
    losses = []
    for a in range(len(pids)):
        pos = [torch.dist(feats[a], feats[p]) for p in range(len(pids)) if p != a and pids[p] == pids[a]]
        neg = [torch.dist(feats[a], feats[n]) for n in range(len(pids)) if pids[n] != pids[a]]
        if not pos or not neg:
            continue
        gap = max(pos) - min(neg)
        losses.append(torch.log1p(torch.exp(gap)) if soft else torch.clamp(gap + margin, min=0))
    return torch.stack(losses).mean()


def test_label_smoothing_hand_worked():
    # softmax(log [1, 1, 2]) = [1/4, 1/4, 1/2]; target 2, ε = 0.1, C = 3:
    # q = [ε/3, ε/3, 1 − ε + ε/3] → loss = (2ε/3)·ln 4 + (1 − 2ε/3)·ln 2 = ln 2 · (1 + 2ε/3)
    logits = torch.log(torch.tensor([[1.0, 1.0, 2.0]]))
    loss = cross_entropy_label_smooth(logits, torch.tensor([2]), epsilon=0.1)
    assert loss.item() == pytest.approx(math.log(2) * (1 + 0.2 / 3), abs=1e-6)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.35])
def test_label_smoothing_matches_torch_cross_entropy(epsilon):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 7, generator=gen, requires_grad=True)
    targets = torch.randint(0, 7, (9,), generator=gen)
    ours = cross_entropy_label_smooth(logits, targets, epsilon)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    theirs = F.cross_entropy(logits, targets, label_smoothing=epsilon)
    (grad_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad_ours, grad_theirs)


def test_triplet_hand_worked():
    # 1-D points 0, 1 (pid 0) and 3, 5 (pid 1): (d_ap, d_an) per anchor = (1, 3), (1, 2), (2, 2), (2, 4)
    feats = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    pids = torch.tensor([0, 0, 1, 1])
    soft = (2 * math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log(2)) / 4
    assert batch_hard_triplet(feats, pids, "soft").item() == pytest.approx(soft, abs=1e-5)
    # hard margin 0.3: only anchor 3 (gap 0) violates it → 0.3 / 4
    assert batch_hard_triplet(feats, pids, "hard", margin=0.3).item() == pytest.approx(0.075, abs=1e-5)


@pytest.mark.parametrize("soft", [True, False])
def test_triplet_matches_loop_brute_force(soft):
    gen = torch.Generator().manual_seed(1)
    pids = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]  # pid 3 has no positive: its anchor is skipped
    feats = torch.randn(len(pids), 5, generator=gen, requires_grad=True)
    mode = "soft" if soft else "hard"
    ours = batch_hard_triplet(feats, torch.tensor(pids), mode, margin=0.7)
    (grad_ours,) = torch.autograd.grad(ours, feats)
    brute = brute_force_triplet(feats, pids, soft, margin=0.7)
    (grad_brute,) = torch.autograd.grad(brute, feats)
    torch.testing.assert_close(ours, brute, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_ours, grad_brute, atol=1e-5, rtol=1e-4)


def test_loss_arguments_are_checked():
    with pytest.raises(ValueError, match="targets"):
        cross_entropy_label_smooth(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="epsilon"):
        cross_entropy_label_smooth(torch.zeros(2, 3), torch.tensor([0, 1]), epsilon=1.0)
    with pytest.raises(ValueError, match="mode"):
        batch_hard_triplet(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), mode="semi")
    with pytest.raises(ValueError, match="positive"):
        batch_hard_triplet(torch.zeros(3, 2), torch.tensor([0, 1, 2]))


def make_batch(seed: int = 0, num_ids: int = 4, k: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(num_ids * k, 3, 32, 16, generator=gen),
        "pid": torch.arange(num_ids).repeat_interleave(k),
    }


def test_forward_parts_equal_an_independent_computation():
    torch.manual_seed(0)
    objective = FinetuneObjective(TinyBackbone(), num_classes=6, ce_weight=0.7, triplet_weight=1.3)
    reference = copy.deepcopy(objective)
    batch = make_batch()
    out = objective(batch)
    assert isinstance(out, StepOutput)
    assert set(out.parts) == {"ce", "triplet"} and out.num_images == 12
    feats = reference.backbone(batch["image"])
    neck = F.batch_norm(feats, None, None, reference.bnneck.weight, torch.zeros(32), training=True)
    ce = F.cross_entropy(neck @ reference.classifier.weight.T, batch["pid"], label_smoothing=0.1)
    triplet = brute_force_triplet(feats, batch["pid"].tolist(), soft=True, margin=0.0)
    torch.testing.assert_close(out.parts["ce"], ce)
    torch.testing.assert_close(out.parts["triplet"], triplet, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, 0.7 * ce + 1.3 * triplet, atol=1e-5, rtol=1e-5)
    assert objective.feature_model() is objective.backbone


def test_zero_weight_part_is_not_computed():
    objective = FinetuneObjective(TinyBackbone(), num_classes=6, triplet_weight=0.0)
    batch = make_batch(k=1)  # one image per id: a triplet would be impossible
    out = objective(batch)
    assert set(out.parts) == {"ce"}
    torch.testing.assert_close(out.loss, out.parts["ce"])


def test_bnneck_bias_frozen_at_zero_and_classifier_bias_free():
    torch.manual_seed(0)
    objective = FinetuneObjective(TinyBackbone(), num_classes=4)
    assert objective.classifier.bias is None
    assert not objective.bnneck.bias.requires_grad
    optimizer = torch.optim.SGD([p for p in objective.parameters() if p.requires_grad], lr=0.5)
    for step in range(3):
        optimizer.zero_grad()
        objective(make_batch(seed=step)).loss.backward()
        optimizer.step()
    assert torch.count_nonzero(objective.bnneck.bias) == 0
    assert not torch.allclose(objective.bnneck.weight, torch.ones(32)), "the BNNeck weight should train"


def test_objective_rejects_bad_input():
    class NoDim(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    with pytest.raises(ValueError, match="feature_dim"):
        FinetuneObjective(NoDim(), num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        FinetuneObjective(TinyBackbone(), num_classes=1)
    with pytest.raises(ValueError, match="both 0"):
        FinetuneObjective(TinyBackbone(), num_classes=3, ce_weight=0, triplet_weight=0)
    objective = FinetuneObjective(TinyBackbone(), num_classes=3)
    with pytest.raises(ValueError, match="'pid'"):
        objective({"image": torch.zeros(2, 3, 8, 4)})
    with pytest.raises(ValueError, match="targets must lie"):
        objective(make_batch(num_ids=4, k=2))


def test_config_validates_and_builds_the_objective():
    config = build_config(BotConfig, {"triplet_mode": "hard", "triplet_margin": 0.5, "ce_weight": 0.5})
    objective = FinetuneObjective.from_config(TinyBackbone(), 5, config)
    assert (objective.triplet_mode, objective.triplet_margin, objective.ce_weight) == ("hard", 0.5, 0.5)
    with pytest.raises(ValueError, match=r"finetune\.random_erasing"):
        FinetuneConfig(random_erasing=2.0)
    with pytest.raises(ValueError, match=r"finetune\.dataset"):
        FinetuneConfig(dataset="nope")
    with pytest.raises(ValueError, match=r"finetune\.method must be one of \('bot',\)"):
        FinetuneConfig(method="arcface")
    with pytest.raises(ValueError, match="bot: label_smoothing"):
        BotConfig(label_smoothing=-0.1)


def test_training_on_tiny_market_lowers_loss_and_raises_map(tmp_path):
    write_tiny_market(tmp_path, num_train=12, num_test=10)
    torch.manual_seed(0)
    config = FinetuneConfig(dataset_root=str(tmp_path), ids_per_batch=6, images_per_id=3, pad=2)
    train, sampler = finetune_train_data(config, (32, 16), seed=0, rank=0, world_size=1)
    objective = FinetuneObjective.from_config(TinyBackbone(), train.num_pids, BotConfig())
    test_split = load_dataset(config.dataset, tmp_path)
    size = {"height": 32, "width": 16}
    eval_config = EvalConfig(device="cpu")
    before = evaluate_feature_set(
        extract_features(objective.feature_model(), test_split, 64, "cpu", **size), eval_config
    )

    loader = DataLoader(train, batch_sampler=sampler)
    optimizer = torch.optim.Adam([p for p in objective.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for epoch in range(12):
        sampler.set_epoch(epoch)
        for batch in loader:
            out = objective(batch)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            losses.append(out.loss.item())
    after = evaluate_feature_set(
        extract_features(objective.feature_model(), test_split, 64, "cpu", **size), eval_config
    )
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    print(f"loss {first:.3f} -> {last:.3f}, mAP {before.mAP:.3f} -> {after.mAP:.3f} ({len(losses)} steps)")
    assert last < 0.6 * first
    assert after.mAP > before.mAP + 0.2
