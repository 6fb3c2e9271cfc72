"""Triton loss terms against the reference contrastive losses (value and autograd gradient).

The kernel checks run under the Triton interpreter (``TRITON_INTERPRET=1``) in ONE subprocess that executes
this file as a script, so the environment variable never leaks into the pytest process or other test files;
on a CUDA machine the same cases run in-process on the GPU. The truth is the reference run on float64
copies of the inputs; the Triton error must be at most twice the reference's own error in the input dtype
(plus a tiny slack scaled to the logits), for ``per_query.mean()`` and for ``grad / B``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from reidscale.kernels import reference_loss as ref
from reidscale.kernels.triton.bank_loss import triton_loss_candidate_terms, triton_loss_full_terms
from tests.support.kernel_cases import case_tests, collect_cases, print_case_results

_EPS32 = 2.0**-24


# ------------------------------------------------------------------------------------------ helpers
def _features(
    shape: tuple[int, int], gen: torch.Generator, *, unit: bool, scale: float = 1.0
) -> torch.Tensor:
    x = torch.randn(shape, generator=gen) * scale
    return x / x.norm(dim=1, keepdim=True) if unit else x


def _index(batch: int, width: int, n_rows: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, K] random indices with some padding (>= 1 valid per row) and matching random weights."""
    index = torch.randint(0, n_rows, (batch, width), generator=gen)
    index[torch.rand(batch, width, generator=gen) < 0.3] = -1
    index[:, 0] = torch.randint(0, n_rows, (batch,), generator=gen)
    weights = torch.rand(batch, width, generator=gen) + 0.1
    return index, weights.masked_fill(index < 0, 0.0)


def _ref_value_grad(
    full: bool, q: torch.Tensor, m: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, t: float
):
    """(loss, dloss/dq) of the reference on the given tensors (CPU), gradient by autograd."""
    q = q.detach().cpu().requires_grad_()
    fn = ref.bank_contrastive_loss_full if full else ref.bank_contrastive_loss_candidates
    loss = fn(q, m.cpu(), idx.cpu(), w.cpu(), t)
    (grad,) = torch.autograd.grad(loss, q)
    return loss.detach(), grad


def _check(full: bool, q: torch.Tensor, m: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, t: float, **kw):
    """Assert the Triton terms match the reference: 2× the reference's own error vs an fp64 truth."""
    fn = triton_loss_full_terms if full else triton_loss_candidate_terms
    per_query, grad = fn(q, m, idx, w, t, True, **kw)
    batch = q.shape[0]
    assert per_query.shape == (batch,) and per_query.dtype == torch.float32
    assert grad.shape == q.shape and grad.dtype == torch.float32
    true_loss, true_grad = _ref_value_grad(full, q.double(), m.double(), idx, w.double(), t)
    ref_loss, ref_grad = _ref_value_grad(full, q, m, idx, w, t)
    logit_scale = float((q.double().cpu() @ m.double().cpu().T).abs().max()) / t
    slack = 8 * _EPS32 * (1.0 + logit_scale) * float(w.sum(dim=1).max())
    err, ref_err = abs(float(per_query.cpu().double().mean() - true_loss)), abs(float(ref_loss - true_loss))
    assert err <= 2 * ref_err + slack, f"loss error {err:.3g} > 2 × reference {ref_err:.3g} + {slack:.3g}"
    grad_slack = 8 * _EPS32 * float(true_grad.abs().max() + m.double().abs().max() / (t * batch))
    err = float((grad.cpu().double() / batch - true_grad).abs().max())
    ref_err = float((ref_grad.double() - true_grad).abs().max())
    assert err <= 2 * ref_err + grad_slack, (
        f"grad error {err:.3g} > 2 × reference {ref_err:.3g} + {grad_slack:.3g}"
    )
    alone, none = fn(q, m, idx, w, t, False, **kw)
    assert none is None and torch.allclose(alone, per_query, rtol=0.0, atol=slack)


def _both_forms(q: torch.Tensor, m: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, t: float) -> None:
    _check(True, q, m, idx, w, t)
    _check(False, q, m, idx, w, t)


# ------------------------------------------------------------------------------------------ cases
def case_normalised_fp32(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(1)
    q, m = _features((5, 33), gen, unit=True), _features((70, 33), gen, unit=True)  # N % 32 != 0, D > 32
    idx, w = _index(5, 6, 70, gen)
    _both_forms(q.to(device), m.to(device), idx.to(device), w.to(device), 0.1)


def case_unnormalised_fp32(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(2)
    q, m = _features((6, 20), gen, unit=False), _features((45, 20), gen, unit=False)
    idx, w = _index(6, 4, 45, gen)
    _both_forms(q.to(device), m.to(device), idx.to(device), w.to(device), 0.5)


def case_half_dtypes(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(3)
    q, m = _features((4, 24), gen, unit=True), _features((50, 24), gen, unit=True)
    idx, w = _index(4, 5, 50, gen)
    d = device
    for qd, md in ((torch.float16,) * 2, (torch.bfloat16,) * 2, (torch.float16, torch.bfloat16)):
        _both_forms(q.to(d, qd), m.to(d, md), idx.to(d), w.to(d), 0.1)
    q, m = _features((4, 24), gen, unit=False), _features((50, 24), gen, unit=False)
    _both_forms(q.to(d, torch.bfloat16), m.to(d, torch.bfloat16), idx.to(d), w.to(d), 0.5)


def case_single_query_odd_dim(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(4)
    q, m = _features((1, 7), gen, unit=False), _features((33, 7), gen, unit=True)
    idx, w = _index(1, 3, 33, gen)
    _both_forms(q.to(device), m.to(device), idx.to(device), w.to(device), 0.2)


def case_non_contiguous(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(5)
    q = _features((9, 4), gen, unit=False).to(device).T  # [4, 9], strides (1, 4)
    m = _features((80, 27), gen, unit=False).to(device)[::2, ::3]  # [40, 9], strides (54, 3)
    idx, w = _index(4, 5, 40, gen)
    idx, w = idx.to(device).T.contiguous().T, w.to(device).T.contiguous().T  # column-major small operands
    _both_forms(q, m, idx, w, 0.3)


def case_large_logits(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(6)
    q, m = _features((3, 16), gen, unit=False, scale=3.0), _features((40, 16), gen, unit=False, scale=3.0)
    assert float((q @ m.T).max()) / 0.05 > 89.0  # exp of the raw logit overflows float32
    idx, w = _index(3, 4, 40, gen)
    _both_forms(q.to(device), m.to(device), idx.to(device), w.to(device), 0.05)


def case_full_bank_splits(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(7)
    q, m = _features((3, 12), gen, unit=True), _features((100, 12), gen, unit=True)  # 4 tiles, last partial
    idx, w = _index(3, 3, 100, gen)
    d = device
    for splits in (1, 2, 3, 4, 9):  # slices of 2, 2, 1, 1 and (clamped) 1 tile: uneven, merged in torch
        _check(True, q.to(d), m.to(d), idx.to(d), w.to(d), 1.0, splits=splits)


def case_candidates_padding_duplicates(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(8)
    q, m = _features((4, 10), gen, unit=True), _features((30, 10), gen, unit=True)
    idx = torch.full((4, 20), -1, dtype=torch.int64)  # 20 slots: two 16-slot tiles
    idx[0] = torch.randint(0, 30, (20,), generator=gen)
    idx[1, 18] = 7  # all padding but one, in the second tile (the first tile is all padding)
    idx[2, 0] = 3  # all padding but one, in the first tile (the second tile is all padding)
    idx[3, :6] = torch.tensor([5, 5, 5, 9, 5, 9])  # duplicates: each repeat is its own softmax column
    w = torch.rand(4, 20, generator=gen).masked_fill(idx < 0, 0.0)
    _both_forms(q.to(device), m.to(device), idx.to(device), w.to(device), 0.1)


def case_candidates_rising_max(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(9)
    q, m = _features((2, 11), gen, unit=False), _features((60, 11), gen, unit=False)
    # 40 slots (three 16-slot tiles) ordered by ascending logit: the running max moves in every tile.
    idx = torch.argsort(q @ m.T, dim=1)[:, -40:]
    w = torch.rand(2, 40, generator=gen)
    _check(False, q.to(device), m.to(device), idx.to(device), w.to(device), 0.2)


def case_duplicates_hand_worked(device: torch.device) -> None:
    # Candidates [a, a, b] with logits (1, 1, 0) at temperature 1 and unit weights:
    # lse = log(2e + 1); per_query = 3 lse − 2; grad = 3 (2e·m_a + m_b)/(2e + 1) − (2 m_a + m_b).
    q = torch.tensor([[1.0, 0.0]], device=device)
    m = torch.tensor([[1.0, 0.0], [0.0, 1.0]], device=device)
    idx, w = torch.tensor([[0, 0, 1]], device=device), torch.ones(1, 3, device=device)
    per_query, grad = triton_loss_candidate_terms(q, m, idx, w, 1.0, True)
    e = torch.e
    lse = torch.log(torch.tensor(2 * e + 1, dtype=torch.float64))
    want_grad = torch.tensor([[3 * 2 * e / (2 * e + 1) - 2, 3 / (2 * e + 1) - 1]], dtype=torch.float64)
    assert abs(float(per_query[0]) - float(3 * lse - 2)) < 1e-6
    torch.testing.assert_close(grad.cpu().double(), want_grad, rtol=0, atol=1e-6)


def case_empty_batch(device: torch.device) -> None:
    q, m = torch.zeros(0, 5, device=device), torch.ones(8, 5, device=device)
    idx, w = torch.zeros(0, 2, dtype=torch.int64, device=device), torch.zeros(0, 2, device=device)
    for fn in (triton_loss_full_terms, triton_loss_candidate_terms):
        per_query, grad = fn(q, m, idx, w, 0.1, True)
        assert per_query.shape == (0,) and grad.shape == (0, 5) and grad.dtype == torch.float32
        assert fn(q, m, idx, w, 0.1, False)[1] is None


CASES = collect_cases(globals())


# ------------------------------------------------------------------------------------------ tests


kernel_results, test_compiled_kernel_matches_reference, test_interpreted_kernel_matches_reference = (
    case_tests(__file__, CASES)
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-driver error")
@pytest.mark.parametrize("fn", [triton_loss_full_terms, triton_loss_candidate_terms])
def test_refuses_to_run_without_driver(monkeypatch: pytest.MonkeyPatch, fn: Callable) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    idx, w = torch.zeros(2, 1, dtype=torch.int64), torch.ones(2, 1)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        fn(torch.ones(2, 3), torch.ones(5, 3), idx, w, 0.1, True)


@pytest.mark.parametrize("splits", [0, -2, 1.5, True])
def test_bad_splits_raise_value_error(monkeypatch: pytest.MonkeyPatch, splits: object) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # only to pass the runnable check: no kernel is launched
    idx, w = torch.zeros(2, 1, dtype=torch.int64), torch.ones(2, 1)
    with pytest.raises(ValueError, match=r"splits must be None or an int >= 1"):
        triton_loss_full_terms(torch.ones(2, 3), torch.ones(5, 3), idx, w, 0.1, True, splits=splits)


if __name__ == "__main__":
    print_case_results(CASES)
