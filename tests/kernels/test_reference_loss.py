"""Tests of the reference bank contrastive losses and bank update against independent brute force."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from reidscale.kernels.reference_loss import (
    bank_contrastive_loss_candidates,
    bank_contrastive_loss_full,
    bank_update,
)

LOW_PRECISION = (torch.float16, torch.bfloat16)


def _random_problem(seed: int, b: int, n: int, d: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    queries = F.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=1).to(dtype)
    bank = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1).to(dtype)
    return queries, bank, gen


# ------------------------------------------------------------------------------------ candidate-set form
def _candidates_bruteforce(queries, bank, candidates, weights, temperature) -> float:
    """Row-by-row, scalar python arithmetic in double precision; independent of the vectorised code."""
    total = 0.0
    for b in range(queries.shape[0]):
        valid = [j for j in range(candidates.shape[1]) if candidates[b, j] >= 0]
        logits = [
            float(queries[b].detach().double() @ bank[candidates[b, j]].double()) / temperature for j in valid
        ]
        top = max(logits)
        lse = top + math.log(sum(math.exp(s - top) for s in logits))
        total -= sum(float(weights[b, j]) * (s - lse) for j, s in zip(valid, logits, strict=True))
    return total / queries.shape[0]


def _candidates_dense_autograd(queries, bank, candidates, weights, temperature) -> torch.Tensor:
    """Per-row softmax with autograd in fp64 (the gradient oracle)."""
    rows = []
    for b in range(queries.shape[0]):
        keep = candidates[b] >= 0
        logits = bank.double()[candidates[b][keep]] @ queries[b] / temperature
        rows.append(-(weights[b][keep].double() * torch.log_softmax(logits, dim=0)).sum())
    return torch.stack(rows).mean()


def _candidate_inputs(seed: int, dtype=torch.float64):
    queries, bank, gen = _random_problem(seed, b=5, n=17, d=6, dtype=dtype)
    candidates = torch.randint(0, 17, (5, 9), generator=gen)
    candidates[0, 1] = candidates[0, 2]  # a duplicate column counts twice
    candidates[1, 6:] = -1
    candidates[3, 0] = -1
    weights = torch.rand(5, 9, generator=gen, dtype=torch.float64).where(candidates >= 0, 0.0)
    return queries, bank, candidates, weights


def test_candidates_hand_worked() -> None:
    queries = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    loss = bank_contrastive_loss_candidates(
        queries, bank, torch.tensor([[0, 1, -1]]), torch.tensor([[1.0, 0.0, 0.0]]), temperature=1.0
    )
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-15)


def test_candidates_match_bruteforce_and_autograd_fp64() -> None:
    queries, bank, candidates, weights = _candidate_inputs(seed=0)
    queries.requires_grad_(True)
    loss = bank_contrastive_loss_candidates(queries, bank, candidates, weights, temperature=0.1)
    assert loss.dtype == torch.float64 and loss.shape == ()
    assert loss.item() == pytest.approx(
        _candidates_bruteforce(queries, bank, candidates, weights, 0.1), 1e-12
    )
    (grad,) = torch.autograd.grad(loss, queries)
    (expected,) = torch.autograd.grad(
        _candidates_dense_autograd(queries, bank, candidates, weights, 0.1), queries
    )
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_candidates_padding_columns_change_nothing() -> None:
    queries, bank, candidates, weights = _candidate_inputs(seed=1)
    padded_c = torch.cat([torch.full((5, 3), -1), candidates], dim=1)
    padded_w = torch.cat([torch.zeros(5, 3, dtype=torch.float64), weights], dim=1)
    loss = bank_contrastive_loss_candidates(queries, bank, candidates, weights, 0.5)
    padded = bank_contrastive_loss_candidates(queries, bank, padded_c, padded_w, 0.5)
    torch.testing.assert_close(loss, padded, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_candidates_low_precision_accumulates_fp32(dtype: torch.dtype) -> None:
    queries, bank, candidates, weights = _candidate_inputs(seed=2, dtype=dtype)
    queries.requires_grad_(True)
    loss = bank_contrastive_loss_candidates(queries, bank, candidates, weights.to(dtype), 0.1)
    assert loss.dtype == torch.float32
    truth = _candidates_bruteforce(queries, bank, candidates, weights.to(dtype), 0.1)  # same rounded inputs
    assert loss.item() == pytest.approx(truth, rel=1e-5)
    loss.backward()
    assert queries.grad is not None and queries.grad.dtype == dtype


def test_candidates_bank_gets_no_gradient() -> None:
    queries, bank, candidates, weights = _candidate_inputs(seed=3)
    queries.requires_grad_(True)
    bank.requires_grad_(True)
    bank_contrastive_loss_candidates(queries, bank, candidates, weights, 0.1).backward()
    assert bank.grad is None and queries.grad is not None


def _candidate_error_cases():
    q, m, c, w = _candidate_inputs(seed=4)
    c_empty_row = c.clone()
    c_empty_row[2] = -1
    return [
        ("queries", (q[0], m, c, w, 0.1)),
        ("queries", (q.long(), m, c, w, 0.1)),
        ("feature size", (q[:, :3], m, c, w, 0.1)),
        ("candidates", (q, m, c.int(), w, 0.1)),
        ("candidates must have 5 rows", (q, m, c[:4], w[:4], 0.1)),
        ("candidates values", (q, m, c.clamp(max=16) + 1, w, 0.1)),
        ("weights must have shape", (q, m, c, w[:, :3], 0.1)),
        ("weights must be 0", (q, m, c, w + 1.0, 0.1)),
        ("non-negative", (q, m, c, -w, 0.1)),
        ("temperature", (q, m, c, w, 0.0)),
        ("temperature", (q, m, c, w, "0.1")),
        ("at least one valid", (q, m, c_empty_row, w.where(c_empty_row >= 0, 0.0), 0.1)),
    ]


@pytest.mark.parametrize(("message", "args"), _candidate_error_cases())
def test_candidates_bad_input_raises(message: str, args) -> None:
    with pytest.raises(ValueError, match=message):
        bank_contrastive_loss_candidates(*args)


# -------------------------------------------------------------------------------------- whole-bank form
def _full_dense(queries, bank, positives, weights, temperature) -> torch.Tensor:
    """Dense B×N logsumexp in fp64 with autograd: the brute-force oracle for the streaming version."""
    logits = queries.double() @ bank.double().T / temperature  # [B, N]
    lse = torch.logsumexp(logits, dim=1, keepdim=True)
    pos = torch.gather(logits - lse, 1, positives.clamp(min=0))
    return -(weights.double() * pos).where(positives >= 0, 0.0).sum(dim=1).mean()


def _full_inputs(seed: int, dtype=torch.float64, b: int = 6, n: int = 23, d: int = 5):
    queries, bank, gen = _random_problem(seed, b, n, d, dtype)
    positives = torch.randint(0, n, (b, 4), generator=gen)
    positives[0, 2:] = -1
    positives[-1, 0] = -1
    return queries, bank, positives


def _dense_loss_and_grad(queries, bank, positives, weights, temperature):
    """The dense oracle's loss and dQ, both in fp64, from an fp64 copy of the (possibly rounded) queries."""
    leaf = queries.detach().double().requires_grad_(True)
    loss = _full_dense(leaf, bank, positives, weights, temperature)
    return loss, torch.autograd.grad(loss, leaf)[0]


def _uniform_weights(positives: torch.Tensor) -> torch.Tensor:
    valid = (positives >= 0).double()
    return valid / valid.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [None, 1, 3, 7, 23, 100])
def test_full_matches_dense_loss_and_gradient(dtype: torch.dtype, chunk: int | None) -> None:
    queries, bank, positives = _full_inputs(seed=10, dtype=dtype)
    queries.requires_grad_(True)
    loss = bank_contrastive_loss_full(queries, bank, positives, None, 0.07, bank_chunk=chunk)
    (grad,) = torch.autograd.grad(loss, queries)
    dense, dense_grad = _dense_loss_and_grad(queries, bank, positives, _uniform_weights(positives), 0.07)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert loss.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(loss.double(), dense, rtol=tol, atol=tol)
    torch.testing.assert_close(grad.double(), dense_grad, rtol=tol, atol=tol)


def test_full_explicit_unnormalised_weights() -> None:
    queries, bank, positives = _full_inputs(seed=11)
    gen = torch.Generator().manual_seed(0)
    weights = (3 * torch.rand(positives.shape, generator=gen, dtype=torch.float64)).where(positives >= 0, 0.0)
    queries.requires_grad_(True)
    loss = bank_contrastive_loss_full(queries, bank, positives, weights, 0.2, bank_chunk=4)
    dense = _full_dense(queries, bank, positives, weights, 0.2)
    torch.testing.assert_close(loss, dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(loss, queries)[0], torch.autograd.grad(dense, queries)[0], rtol=1e-12, atol=1e-12
    )


def test_full_gradcheck_and_extreme_logits() -> None:
    queries, bank, positives = _full_inputs(seed=12, b=3, n=11, d=4)
    queries = (queries * 30.0).requires_grad_(True)  # logits up to ±3000: exp overflows without the max
    fn = lambda q: bank_contrastive_loss_full(q, bank, positives, None, 0.01, bank_chunk=4)  # noqa: E731
    assert torch.isfinite(fn(queries))
    torch.testing.assert_close(
        fn(queries), _full_dense(queries, bank, positives, _uniform_weights(positives), 0.01)
    )
    assert torch.autograd.gradcheck(fn, (queries,))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_full_low_precision_accumulates_fp32(dtype: torch.dtype) -> None:
    queries, bank, positives = _full_inputs(seed=13, dtype=dtype)
    queries.requires_grad_(True)
    loss = bank_contrastive_loss_full(queries, bank, positives, None, 0.1, bank_chunk=5)
    assert loss.dtype == torch.float32
    weights = _uniform_weights(positives)
    dense, dense_grad = _dense_loss_and_grad(queries, bank, positives, weights, 0.1)  # same rounded inputs
    torch.testing.assert_close(loss.double(), dense, rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(loss, queries)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.double(), dense_grad, rtol=2e-2, atol=2e-3)  # grad rounded to dtype


def test_full_bank_gets_no_gradient() -> None:
    queries, bank, positives = _full_inputs(seed=14)
    queries.requires_grad_(True)
    bank.requires_grad_(True)
    bank_contrastive_loss_full(queries, bank, positives, None, 0.1, bank_chunk=5).backward()
    assert bank.grad is None and queries.grad is not None


class _LargestOutput(TorchDispatchMode):
    """Records the largest numel of any tensor produced by an aten op (views included)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_full_never_materialises_batch_by_bank() -> None:
    b, n, d, p, chunk = 16, 300, 4, 4, 7
    queries, bank, positives = _full_inputs(seed=15, b=b, n=n, d=d)
    queries.requires_grad_(True)
    bound = max(b * chunk, b * p * d, n * d)  # chunk logits, gathered positives, the bank itself (a view)
    assert bound < b * n
    with _LargestOutput() as streamed:
        bank_contrastive_loss_full(queries, bank, positives, None, 0.1, bank_chunk=chunk).backward()
    with _LargestOutput() as dense:  # the mode does see a B×N tensor when one exists
        _full_dense(queries, bank, positives, _uniform_weights(positives), 0.1).backward()
    assert streamed.largest <= bound
    assert dense.largest >= b * n


class _OpNames(TorchDispatchMode):
    """Records the name of every aten op that runs inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_full_backward_does_not_recompute_bank_products() -> None:
    queries, bank, positives = _full_inputs(seed=17, b=4, n=40, d=3)
    queries.requires_grad_(True)
    loss = bank_contrastive_loss_full(queries, bank, positives, None, 0.1, bank_chunk=6)
    with _OpNames() as backward_ops:
        loss.backward()
    products = [
        n for n in backward_ops.names if n.split(".")[0] in {"mm", "addmm", "bmm", "matmul", "einsum"}
    ]
    assert backward_ops.names and not products, backward_ops.names
    with torch.no_grad(), _OpNames() as no_grad_ops:  # no gradient wanted: no [B, D] accumulation either
        bank_contrastive_loss_full(queries, bank, positives, None, 0.1, bank_chunk=6)
    assert no_grad_ops.names.count("mm.default") == 7  # one q·Mᵀ per chunk, no probs·M


def _full_error_cases():
    q, m, pos = _full_inputs(seed=16)
    return [
        ("bank", (q, m[:, :, None], pos, None, 0.1)),
        ("positives", (q, m, pos.float(), None, 0.1)),
        ("positives values", (q, m, pos - 2, None, 0.1)),
        ("at least one valid", (q, m, pos.where(torch.arange(6)[:, None] != 2, -1), None, 0.1)),
        ("positive_weights must have shape", (q, m, pos, torch.ones(6, 3, dtype=torch.float64), 0.1)),
        ("positive_weights must be 0", (q, m, pos, torch.ones(6, 4, dtype=torch.float64), 0.1)),
        ("temperature", (q, m, pos, None, -1.0)),
        ("bank_chunk", (q, m, pos, None, 0.1, 0)),
        ("bank_chunk", (q, m, pos, None, 0.1, 2.5)),
        ("bank must have at least one row", (q, m[:0], pos[:, :0], None, 0.1)),
    ]


@pytest.mark.parametrize(("message", "args"), _full_error_cases())
def test_full_bad_input_raises(message: str, args) -> None:
    with pytest.raises(ValueError, match=message):
        bank_contrastive_loss_full(*args)


# ------------------------------------------------------------------------------------------- bank update
def _sequential_truth(bank, indices, features, momentum, normalize=True):
    """One pair at a time in batch order, in fp64."""
    rows = bank.double().clone()
    for i, f in zip(indices.tolist(), features.double(), strict=True):
        new = momentum * rows[i] + (1 - momentum) * f
        rows[i] = new / new.norm().clamp(min=1e-12) if normalize else new
    return rows


def test_update_hand_worked() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    bank_update(bank, torch.tensor([0]), torch.tensor([[0.0, 1.0]]), momentum=0.5)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(bank, torch.tensor([[s, s], [0.0, 1.0], [0.6, 0.8]]))
    bank_update(bank, torch.tensor([2]), torch.tensor([[1.0, 1.0]]), momentum=0.75, normalize=False)
    torch.testing.assert_close(bank[2], torch.tensor([0.7, 0.85]))


def test_update_repeats_apply_sequentially_in_batch_order() -> None:
    gen = torch.Generator().manual_seed(20)
    bank = F.normalize(torch.randn(6, 3, generator=gen, dtype=torch.float64), dim=1)
    indices = torch.tensor([2, 0, 2, 5, 2, 0])
    features = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    updated = bank.clone()
    bank_update(updated, indices, features, momentum=0.3)
    torch.testing.assert_close(
        updated, _sequential_truth(bank, indices, features, 0.3), rtol=1e-14, atol=1e-14
    )
    reordered = bank.clone()
    bank_update(reordered, indices.flip(0), features.flip(0), momentum=0.3)
    assert not torch.allclose(reordered[2], updated[2])  # order matters, so the rule is observable
    torch.testing.assert_close(reordered[5], updated[5])  # a single occurrence does not depend on order


def test_update_momentum_extremes_and_unnormalised_repeats() -> None:
    bank = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    features = torch.tensor([[0.0, 2.0], [5.0, 5.0]], dtype=torch.float64)
    keep = bank.clone()
    bank_update(keep, torch.tensor([0, 1]), features, momentum=1.0)
    torch.testing.assert_close(keep, torch.tensor([[0.6, 0.8], [1.0, 0.0]], dtype=torch.float64))
    replace = bank.clone()
    bank_update(replace, torch.tensor([0, 0]), features, momentum=0.0)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(replace[0], torch.tensor([s, s], dtype=torch.float64))
    raw = bank.clone()
    bank_update(raw, torch.tensor([0, 0]), features, momentum=0.5, normalize=False)
    torch.testing.assert_close(
        raw[0], torch.tensor([0.25 * 3 + 2.5, 0.25 * 4 + 0.5 + 2.5], dtype=torch.float64)
    )


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_update_low_precision_bank_rounds_once(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(21)
    bank = F.normalize(torch.randn(5, 8, generator=gen), dim=1).to(dtype)
    indices = torch.tensor([1, 3, 1, 1])
    features = torch.randn(4, 8, generator=gen)
    updated = bank.clone()
    bank_update(updated, indices, features, momentum=0.5)
    assert updated.dtype == dtype
    expected = _sequential_truth(bank, indices, features, 0.5).to(dtype)
    torch.testing.assert_close(updated, expected, rtol=0, atol=0)  # fp32 vs fp64 work rounds the same here
    torch.testing.assert_close(updated[[0, 2, 4]], bank[[0, 2, 4]], rtol=0, atol=0)


def test_update_records_no_autograd_history() -> None:
    bank = F.normalize(torch.randn(4, 3), dim=1)
    features = torch.randn(2, 3, requires_grad=True)
    bank_update(bank, torch.tensor([0, 1]), features, momentum=0.5)
    assert bank.grad_fn is None and not bank.requires_grad


def _update_error_cases():
    bank, idx, feat = torch.zeros(4, 3), torch.tensor([0, 1]), torch.ones(2, 3)
    return [
        ("bank", (bank.long(), idx, feat, 0.5)),
        ("indices", (bank, idx.int(), feat, 0.5)),
        ("indices", (bank, idx[:, None], feat, 0.5)),
        ("features must have shape", (bank, idx, feat[:1], 0.5)),
        ("features must have shape", (bank, idx, torch.ones(2, 4), 0.5)),
        ("indices values", (bank, torch.tensor([0, 4]), feat, 0.5)),
        ("indices values", (bank, torch.tensor([-1, 0]), feat, 0.5)),
        ("momentum", (bank, idx, feat, 1.5)),
        ("momentum", (bank, idx, feat, None)),
    ]


@pytest.mark.parametrize(("message", "args"), _update_error_cases())
def test_update_bad_input_raises(message: str, args) -> None:
    before = args[0].clone()
    with pytest.raises(ValueError, match=message):
        bank_update(*args)
    assert torch.equal(args[0], before)
