"""CION's objective on a small ResNet: the loss is the identity distillation loss of the student's and
the teacher's head outputs, K follows the schedule by epoch, the teacher follows the student by the EMA (on
the fp32 master), the centre by its update, the prototype layer stays frozen in the first epoch, and the
state survives a checkpoint."""

from __future__ import annotations

import pytest
import torch

from reidscale.data.sampler import KSchedule
from reidscale.models.registry import create_backbone
from reidscale.objectives.base import TrainingContext
from reidscale.objectives.cion import CionConfig, CionDistillation, identity_distillation_loss, update_center

CONFIG = CionConfig(num_prototypes=64, hidden_dim=32, bottleneck_dim=16, num_local=2)


def make_objective(steps_per_epoch: int = 2) -> CionDistillation:
    torch.manual_seed(0)
    k_at = KSchedule(((0, 2), (1, 4))).k_at
    objective = CionDistillation(create_backbone("resnet18"), CONFIG, k_at)
    objective.setup(TrainingContext(device=torch.device("cpu"), steps_per_epoch=steps_per_epoch))
    return objective


def views(batch: int = 8, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 32, 16, generator=generator) for _ in range(2)] + [
        torch.randn(batch, 3, 16, 8, generator=generator) for _ in range(2)
    ]


def test_the_loss_is_the_distillation_loss_of_the_two_networks() -> None:
    objective = make_objective()
    objective.before_step(0, {"temperature": 0.05, "momentum": 0.99})
    crops = views()
    out = objective({"views": crops})
    with torch.no_grad():
        teacher_out = objective.teacher(crops[:2])
    student_out = objective.student(crops)
    expected = identity_distillation_loss(
        teacher_out, student_out, torch.zeros(64), 2, 0.05, CONFIG.student_temp
    )
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.num_images == 8 and set(out.parts) == {"distillation", "teacher_entropy", "student_entropy"}
    log_c = torch.log(torch.tensor(64.0)).item()
    assert (
        0 < out.parts["teacher_entropy"].item() <= log_c and 0 < out.parts["student_entropy"].item() <= log_c
    )
    flat = objective.entropies(torch.zeros(16, 64), torch.zeros(32, 64))  # equal outputs: uniform both
    assert all(value.item() == pytest.approx(log_c, rel=1e-6) for value in flat.values())
    assert teacher_out.shape == (16, 64) and student_out.shape == (32, 64)
    with pytest.raises(ValueError, match=r"CION expects 2 global \+ cion.num_local=2 local views, got 3"):
        objective({"views": crops[:3]})


def test_the_released_k_schedule_scales_with_the_run() -> None:
    from reidscale.data.sampler import CION_K_MILESTONES

    assert CionConfig().k_milestones(100) == CION_K_MILESTONES  # the sampler's default, in epochs
    assert CionConfig().k_milestones(10) == ((0, 2), (4, 4), (6, 6), (8, 8))
    assert CionConfig().k_milestones(3) == ((0, 2), (1, 6), (2, 8))  # 0.4·3 and 0.6·3 fall on epoch 1
    with pytest.raises(ValueError, match=r"cion\.k_schedule fractions must start at 0"):
        CionConfig(k_schedule=[[0.5, 2]])
    with pytest.raises(
        ValueError, match=r"cion.k_schedule must be \[fraction, K\] pairs with integer K >= 1"
    ):
        CionConfig(k_schedule=[[0.0, 2.5]])


@pytest.mark.parametrize(("field", "value"), [("color_jitter_p", 1.5), ("grayscale_p", -0.1), ("hue", 0.6)])
def test_view_options_out_of_range_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"cion\.{field} must lie in"):
        CionConfig(**{field: value})


def test_k_follows_the_schedule_by_epoch() -> None:
    objective = make_objective(steps_per_epoch=2)
    ks = []
    for step in range(4):
        objective.before_step(step, {"temperature": 0.04, "momentum": 0.99})
        ks.append(objective.images_per_id)
    assert ks == [2, 2, 4, 4]


def test_after_a_step_teacher_centre_and_frozen_prototypes() -> None:
    objective = make_objective(steps_per_epoch=1)
    optimizer = torch.optim.SGD(objective.student.parameters(), lr=0.5)
    teacher_before = [p.detach().clone() for p in objective.teacher.parameters()]
    for step in (0, 1):  # epoch 0: the prototypes are frozen; epoch 1: they train
        objective.before_step(step, {"temperature": 0.04, "momentum": 0.5})
        prototypes_before = objective.student.head.prototypes.detach().clone()
        out = objective({"views": views(seed=step)})
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        teacher_out = objective.teacher(views(seed=step)[:2]).detach()
        centre_before = objective.center.clone()
        objective.after_step(step, {"momentum": 0.5})
        frozen = torch.equal(objective.student.head.prototypes, prototypes_before)
        assert frozen == (step == 0)
        assert torch.allclose(objective.center, update_center(centre_before, teacher_out, 0.9))
        for before, teacher, student in zip(
            teacher_before, objective.teacher.parameters(), objective.student.parameters(), strict=True
        ):
            assert torch.allclose(teacher, 0.5 * before + 0.5 * student, atol=1e-6)
        teacher_before = [p.detach().clone() for p in objective.teacher.parameters()]
    assert objective.center.abs().sum() > 0


def test_the_centre_moves_by_the_mean_of_every_micro_batch_of_a_step() -> None:
    objective = make_objective()
    objective.before_step(0, {"temperature": 0.04, "momentum": 0.9})
    objective({"views": views(seed=5)})  # a skipped step: before_step comes again without after_step
    objective.before_step(0, {"temperature": 0.04, "momentum": 0.9})
    micro_batches = [views(seed=1), views(batch=4, seed=2)]  # rows weigh equally: 16 and 8 teacher rows
    for crops in micro_batches:
        objective({"views": crops})
    with torch.no_grad():
        rows = torch.cat([objective.teacher(crops[:2]) for crops in micro_batches])
    objective.after_step(0, {"momentum": 0.9})
    torch.testing.assert_close(objective.center, 0.1 * rows.double().mean(0).float(), rtol=1e-5, atol=1e-7)


def test_the_state_survives_a_checkpoint_and_a_wrong_one_is_refused() -> None:
    objective = make_objective()
    objective.before_step(0, {"temperature": 0.04, "momentum": 0.9})
    objective({"views": views()}).loss.backward()
    objective.after_step(0, {"momentum": 0.9})
    state = objective.extra_state()
    other = make_objective()
    other.load_extra_state(state)
    assert torch.equal(other.center, objective.center)
    assert all(torch.equal(a, b) for a, b in zip(other.master, objective.master, strict=True))
    with pytest.raises(ValueError, match="CION extra state must hold center and master"):
        other.load_extra_state({"center": state["center"]})
    with pytest.raises(ValueError, match="CION extra state does not fit this model"):
        other.load_extra_state({"center": torch.zeros(3), "master": state["master"]})


def test_features_come_from_the_teachers_backbone() -> None:
    objective = make_objective()
    features = objective.feature_model()(torch.randn(3, 3, 32, 16))
    assert objective.feature_model() is objective.teacher.backbone and features.shape == (3, 512)
