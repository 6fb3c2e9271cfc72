"""Triton ``bank_update`` against the reference ``bank_update`` (and hand-worked rows).

The kernel checks run under the Triton interpreter (``TRITON_INTERPRET=1``) in ONE subprocess that executes
this file as a script, so the environment variable never leaks into the pytest process or other test files;
on a CUDA machine the same cases run in-process on the GPU. Without normalisation the result is bitwise
the reference's; with it the norm's summation order differs from torch's, so rows agree to
within two ulps of their largest entry.
"""

from __future__ import annotations

import pytest
import torch

from reidscale.kernels import reference_loss as ref
from reidscale.kernels.support import TRITON_UPDATE_MAX_D
from reidscale.kernels.triton.bank_update import triton_bank_update
from tests.support.kernel_cases import case_tests, collect_cases, print_case_results


def _compare(
    bank: torch.Tensor, indices: torch.Tensor, features: torch.Tensor, momentum: float, normalize: bool
):
    """Run both on copies of ``bank``; assert bitwise equality (no normalisation) or two ulps of the dtype."""
    want = bank.cpu().clone()
    ref.bank_update(want, indices.cpu(), features.cpu(), momentum, normalize)
    got = bank.clone()
    triton_bank_update(got, indices, features, momentum, normalize)
    got = got.cpu()
    touched = torch.zeros(bank.shape[0], dtype=torch.bool)
    touched[indices.cpu()] = True
    assert torch.equal(got[~touched], bank.cpu()[~touched]), "rows outside `indices` changed"
    if not normalize:
        assert torch.equal(got, want), (
            f"not bitwise equal: max diff {(got.float() - want.float()).abs().max()}"
        )
        return
    # Normalised rows: within two ulps of each row's largest entry (the norms sum in a different order).
    scale = want.float().abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(bank.dtype).tiny)
    diff = (got.float() - want.float()).abs()
    assert bool((diff <= 2 * torch.finfo(bank.dtype).eps * scale).all()), f"max diff {diff.max()}"


def _data(n_rows: int, dim: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    bank = torch.randn(n_rows, dim, generator=gen)
    bank = bank / bank.norm(dim=1, keepdim=True)
    return bank, torch.randint(0, n_rows, (batch,), generator=gen), torch.randn(batch, dim, generator=gen)


_REPEATS = torch.tensor([3, 7, 3, 11, 0, 3, 7])  # 3 at positions 0, 2, 5; 7 at 1 and 6


def case_repeats_fp32(device: torch.device) -> None:
    bank, _, features = _data(12, 33, 7, 1)
    for momentum in (0.5, 0.9, 0.0, 1.0):
        for normalize in (True, False):
            _compare(bank.to(device), _REPEATS.to(device), features.to(device), momentum, normalize)


def case_random_batch(device: torch.device) -> None:
    bank, indices, features = _data(40, 64, 30, 2)  # random indices: some repeat, most rows untouched
    _compare(bank.to(device), indices.to(device), features.to(device), 0.5, True)


def case_momentum_extremes_exact(device: torch.device) -> None:
    bank, _, features = _data(12, 9, 7, 3)
    got = bank.to(device)
    triton_bank_update(got, _REPEATS.to(device), features.to(device), 0.0, False)  # the last feature wins
    for row, pos in ((3, 5), (7, 6), (11, 3), (0, 4)):
        assert torch.equal(got[row].cpu(), features[pos])
    got = bank.to(device)
    triton_bank_update(got, _REPEATS.to(device), features.to(device), 1.0, False)  # nothing changes
    assert torch.equal(got.cpu(), bank)


def case_hand_worked_sequence(device: torch.device) -> None:
    bank = torch.tensor([[3.0, 4.0], [1.0, 1.0]], device=device)
    feats = torch.tensor([[1.0, 0.0], [5.0, 5.0], [0.0, 2.0]], device=device)
    triton_bank_update(bank, torch.tensor([0, 1, 0], device=device), feats, 0.5, True)
    first = torch.tensor([2.0, 2.0], dtype=torch.float64) / 8**0.5  # (0.5·[3,4] + 0.5·[1,0]) normalised
    second = 0.5 * first + torch.tensor([0.0, 1.0], dtype=torch.float64)  # then feature 2
    want = torch.stack([second / second.norm(), torch.tensor([3.0, 3.0], dtype=torch.float64) / 18**0.5])
    torch.testing.assert_close(bank.cpu().double(), want, rtol=0, atol=1e-7)


def case_half_banks(device: torch.device) -> None:
    bank, _, features = _data(12, 17, 7, 4)
    d = device
    for dtype in (torch.float16, torch.bfloat16):
        for normalize in (True, False):
            _compare(bank.to(d, dtype), _REPEATS.to(d), features.to(d), 0.7, normalize)  # fp32 features
            _compare(bank.to(d, dtype), _REPEATS.to(d), features.to(d, dtype), 0.5, normalize)
    _compare(bank.to(d), _REPEATS.to(d), features.to(d, torch.bfloat16), 0.5, True)  # half features


def case_zero_rows(device: torch.device) -> None:
    bank, _, features = _data(12, 8, 7, 5)
    bank[3] = 0.0
    features[4] = 0.0  # row 0 gets feature 4 only
    _compare(bank.to(device), _REPEATS.to(device), features.to(device), 1.0, True)  # zero row stays zero
    got = bank.to(device)
    triton_bank_update(got, _REPEATS.to(device), features.to(device), 0.0, True)
    assert torch.equal(got[0].cpu(), torch.zeros(8))  # a zero feature at momentum 0: 0 / 1e-12 = 0
    _compare(bank.to(device), _REPEATS.to(device), features.to(device), 0.0, True)


def case_non_contiguous(device: torch.device) -> None:
    bank, _, features = _data(12, 10, 7, 6)
    storage = torch.zeros(24, 20, device=device)
    view = storage[::2, ::2]  # [12, 10] strided view of a larger buffer
    view.copy_(bank.to(device))
    feats = features.to(device).T.contiguous().T  # column-major features
    want = bank.clone()
    ref.bank_update(want, _REPEATS, features, 0.5, True)
    triton_bank_update(view, _REPEATS.to(device), feats, 0.5, True)
    torch.testing.assert_close(view.cpu(), want, rtol=2**-23, atol=0)
    assert torch.equal(storage[1::2].cpu(), torch.zeros(12, 20)) and torch.equal(
        storage[:, 1::2].cpu(), torch.zeros(24, 10)
    )


def case_too_wide(device: torch.device) -> None:
    bank = torch.zeros(2, TRITON_UPDATE_MAX_D + 1, device=device)
    with pytest.raises(ValueError, match="bank must have D <="):
        triton_bank_update(bank, torch.tensor([0], device=device), bank[:1].clone(), 0.5, True)


CASES = collect_cases(globals())


# ------------------------------------------------------------------------------------------ tests


kernel_results, test_compiled_kernel_matches_reference, test_interpreted_kernel_matches_reference = (
    case_tests(__file__, CASES)
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-driver error")
def test_refuses_to_run_without_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    bank = torch.zeros(3, 2)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        triton_bank_update(bank, torch.tensor([1]), torch.ones(1, 2), 0.5, True)
    assert torch.equal(bank, torch.zeros(3, 2))


if __name__ == "__main__":
    print_case_results(CASES)
