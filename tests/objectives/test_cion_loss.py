"""CION's identity distillation loss against the formula written as a double loop in float64 (values and
gradients), the shapes it refuses, and hand-worked cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reidscale.objectives.cion import identity_distillation_loss, update_center
from tests.support.reference.cion_loss import literal_loss


def random_case(identities: int, k: int, views: int, prototypes: int, seed: int, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    batch = identities * k
    teacher = torch.randn(2 * batch, prototypes, generator=generator, dtype=dtype)
    student = torch.randn(views * batch, prototypes, generator=generator, dtype=dtype, requires_grad=True)
    center = 0.1 * torch.randn(prototypes, generator=generator, dtype=dtype)
    return teacher, student, center


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("views", [2, 3, 10])
def test_the_loss_and_its_gradient_are_the_formulas(k: int, views: int) -> None:
    identities = 7  # B = 7K: nothing nice
    teacher, student, center = random_case(identities, k, views, prototypes=33, seed=10 * k + views)
    mine = identity_distillation_loss(teacher, student, center, k)
    (grad_mine,) = torch.autograd.grad(mine, student)
    truth = literal_loss(teacher, student, center, k)
    (grad_truth,) = torch.autograd.grad(truth, student)
    assert mine.dtype == torch.float64  # fp64 in, fp64 maths
    assert mine.item() == pytest.approx(truth.item(), rel=1e-12)
    assert torch.allclose(grad_mine, grad_truth, rtol=1e-10, atol=1e-15)


def test_k_equal_1_is_dino_and_the_temperatures_are_used() -> None:
    """K = 1: no identity term, the DINO loss (mean over pairs of the cross entropy)."""
    teacher, student, center = random_case(5, 1, 4, prototypes=9, seed=0)
    p = F.softmax((teacher - center) / 0.07, dim=-1).split(5)
    q = F.log_softmax(student / 0.2, dim=-1).split(5)
    pairs = [-(p[a] * q[v]).sum(-1).mean() for a in range(2) for v in range(4) if v != a]
    expected = torch.stack(pairs).mean()
    got = identity_distillation_loss(teacher, student, center, 1, teacher_temp=0.07, student_temp=0.2)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_hand_worked_case() -> None:
    """C = 2, B = 2 (one identity of K = 2), V = 2, centre 0, τ = 1: teacher rows give P = (1/2, 1/2) and
    (e/(1+e), 1/(1+e)); student rows all (0, 0) give Q = log(1/2) everywhere, so every cross entropy is
    log 2 and the loss is log 2 (the normaliser K(K−1)+1 = 3 counts 1 all-rows term and 2 cross terms)."""
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    student = torch.zeros(4, 2, requires_grad=True)
    loss = identity_distillation_loss(teacher, student, torch.zeros(2), 2, teacher_temp=1.0, student_temp=1.0)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)


def test_no_gradient_reaches_the_teacher() -> None:
    teacher, student, center = random_case(3, 2, 3, prototypes=5, seed=1, dtype=torch.float32)
    teacher.requires_grad_(True)
    identity_distillation_loss(teacher, student, center, 2).backward()
    assert teacher.grad is None and student.grad is not None


def test_fp32_and_bf16_inputs_are_computed_in_fp32() -> None:
    """fp32: within 2x the error of the literal form computed in fp32 (both against fp64); bf16 inputs are
    rounded, not the maths: the same as the fp32 loss of the rounded inputs."""
    teacher, student, center = random_case(9, 4, 10, prototypes=257, seed=2)
    truth = literal_loss(teacher, student, center, 4).item()
    single = [x.detach().float() for x in (teacher, student, center)]
    mine = identity_distillation_loss(*single, 4)
    reference_error = abs(literal_loss(*single, 4).item() - truth)
    assert mine.dtype == torch.float32 and abs(mine.item() - truth) <= 2 * reference_error + 1e-7
    half = [x.bfloat16() for x in single[:2]]
    from_half = identity_distillation_loss(*half, single[2], 4)
    assert from_half.dtype == torch.float32
    assert from_half.item() == identity_distillation_loss(*(x.float() for x in half), single[2], 4).item()


@pytest.mark.parametrize(
    ("teacher_shape", "student_shape", "center_size", "k", "message"),
    [
        ((6, 4), (12, 5), 4, 1, r"same C"),
        ((5, 4), (10, 4), 4, 1, r"teacher_out must hold the 2 global views"),
        ((8, 4), (16, 4), 4, 3, r"images_per_id must be >= 1 and divide the 4 images per view, got 3"),
        ((8, 4), (4, 4), 4, 2, r"student_out must hold V >= 2 views of the 4 images"),
        ((8, 4), (16, 4), 5, 2, r"center must hold C = 4 values"),
    ],
)
def test_shapes_that_do_not_fit_are_named(teacher_shape, student_shape, center_size, k, message) -> None:
    with pytest.raises(ValueError, match=message):
        identity_distillation_loss(
            torch.zeros(teacher_shape), torch.zeros(student_shape), torch.zeros(center_size), k
        )


# --- the centre ---------------------------------------------------------------------------------------


def centre_scenario(rank: int, world_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rank)
    rows = 3 if rank == 0 else 5  # ranks may hold different numbers of rows: weighted by rows
    return update_center(torch.full((4,), 0.5), torch.randn(rows, 4, generator=generator), momentum=0.9)


@pytest.mark.multiproc
def test_the_centre_is_the_mean_over_every_ranks_rows(tmp_path) -> None:
    from tests.support.gloo_ranks import run_on_two_ranks

    centres = run_on_two_ranks(centre_scenario, tmp_path)
    rows = torch.cat(
        [torch.randn(n, 4, generator=torch.Generator().manual_seed(r)) for r, n in ((0, 3), (1, 5))]
    )
    expected = 0.9 * 0.5 + 0.1 * rows.double().mean(dim=0)
    assert torch.allclose(centres[0], centres[1]) and torch.allclose(centres[0].double(), expected, atol=1e-7)


def test_the_centre_alone_and_its_refusals() -> None:
    rows = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert update_center(torch.zeros(1, 2), rows, momentum=0.75).tolist() == [[0.5, 1.0]]
    with pytest.raises(ValueError, match=r"teacher_out must be \[R, C\] with C = 3"):
        update_center(torch.zeros(3), rows)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\], got 1.5"):
        update_center(torch.zeros(2), rows, momentum=1.5)
