"""Triton ``bank_topk`` against the reference ``bank_topk``.

The kernel checks run under the Triton interpreter (``TRITON_INTERPRET=1``) in ONE subprocess that executes
this file as a script, so the environment variable never leaks into the pytest process or other test files;
on a CUDA machine the same cases run in-process on the GPU. The remaining tests (guard, validation, the
large-k fallback) launch no kernel.
"""

from __future__ import annotations

import pytest
import torch

from reidscale.kernels import reference_topk as ref
from reidscale.kernels.checks import Exclusions
from reidscale.kernels.support import TRITON_TOPK_MAX_K
from reidscale.kernels.triton import triton_available, triton_bank_topk
from tests.support.kernel_cases import case_tests, collect_cases, print_case_results

# ------------------------------------------------------------------------------------------ cases


def _ints(shape: tuple[int, ...], low: int, high: int, gen: torch.Generator) -> torch.Tensor:
    """Integer-valued float32 features: every dot product is exact, so ties are real ties."""
    return torch.randint(low, high, shape, generator=gen).to(torch.float32)


def _compare(queries: torch.Tensor, bank: torch.Tensor, k: int, *, exact: bool = True, **kw: object) -> None:
    """Assert the Triton result equals the reference (indices equal; scores equal or within fp32 tol)."""
    got_s, got_i = triton_bank_topk(queries, bank, k, Exclusions.check(queries, bank.shape[0], **kw))
    want_s, want_i = ref.bank_topk(queries.cpu(), bank.cpu(), k, **{n: _cpu(v) for n, v in kw.items()})
    assert got_s.shape == (queries.shape[0], k) and got_s.dtype == torch.float32
    assert got_i.shape == (queries.shape[0], k) and got_i.dtype == torch.int64
    assert torch.equal(got_i.cpu(), want_i), f"indices differ:\n{got_i}\n{want_i}"
    if exact:
        assert torch.equal(got_s.cpu(), want_s), f"scores differ:\n{got_s}\n{want_s}"
    else:
        torch.testing.assert_close(got_s.cpu(), want_s, rtol=1e-5, atol=1e-5)


def _cpu(value: object) -> object:
    return value.cpu() if isinstance(value, torch.Tensor) else value


def case_ties_odd_shapes(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(1)
    q, m = _ints((5, 7), -1, 2, gen), _ints((41, 7), -1, 2, gen)  # odd D, N not a multiple of the tile
    _compare(q.to(device), m.to(device), 10)
    _compare(q.to(device), m.to(device), 1)


def case_all_scores_equal(device: torch.device) -> None:
    q, m = torch.ones(3, 4), torch.ones(50, 4)  # every score 4.0: order is by index only
    _compare(q.to(device), m.to(device), 17)


def case_labels_and_self(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(2)
    q, m = _ints((6, 9), -2, 3, gen), _ints((45, 9), -2, 3, gen)
    q_lab, b_lab = torch.randint(0, 3, (6,), generator=gen), torch.randint(0, 3, (45,), generator=gen)
    selves = torch.tensor([0, -1, 44, 7, 20, -1])
    d = device
    _compare(q.to(d), m.to(d), 12, query_labels=q_lab.to(d), bank_labels=b_lab.to(d), self_index=selves.to(d))
    _compare(q.to(d), m.to(d), 5, self_index=selves.to(d))


def case_cam_penalty(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(3)
    q, m = _ints((4, 6), -2, 3, gen), _ints((37, 6), -2, 3, gen)
    q_cam, b_cam = torch.randint(0, 3, (4,), generator=gen), torch.randint(0, 3, (37,), generator=gen)
    q_lab, b_lab = torch.randint(0, 4, (4,), generator=gen), torch.randint(0, 4, (37,), generator=gen)
    d = device
    cams = {"query_cams": q_cam.to(d), "bank_cams": b_cam.to(d)}
    _compare(q.to(d), m.to(d), 9, cam_penalty=1.5, **cams)
    _compare(
        q.to(d), m.to(d), 9, cam_penalty=-0.75, query_labels=q_lab.to(d), bank_labels=b_lab.to(d), **cams
    )
    _compare(q.to(d), m.to(d), 9, cam_penalty=0.0, **cams)


def case_padding(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(4)
    q, m = _ints((3, 5), -2, 3, gen), _ints((11, 5), -2, 3, gen)
    _compare(q.to(device), m.to(device), 20)  # k > N
    labels = torch.tensor([7, 1, 7]), torch.tensor([7] * 11)  # queries 0 and 2: every row is a positive
    exclusions = Exclusions.check(
        q.to(device), 11, query_labels=labels[0].to(device), bank_labels=labels[1].to(device)
    )
    s, i = triton_bank_topk(q.to(device), m.to(device), 4, exclusions)
    assert bool((i[[0, 2]] == -1).all()) and bool(torch.isneginf(s[[0, 2]]).all())
    _compare(
        q.to(device), m.to(device), 4, query_labels=labels[0].to(device), bank_labels=labels[1].to(device)
    )


def case_batch_sizes(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(5)
    m = _ints((33, 8), -2, 3, gen).to(device)
    _compare(_ints((1, 8), -2, 3, gen).to(device), m, 6)  # B = 1
    _compare(_ints((21, 8), -2, 3, gen).to(device), m, 6)  # two query blocks, the second partial


def case_half_dtypes(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(6)
    q, m = _ints((4, 11), -3, 4, gen), _ints((40, 11), -3, 4, gen)
    for dtype in (torch.float16, torch.bfloat16):
        _compare(q.to(device, dtype), m.to(device, dtype), 8)
    _compare(q.to(device, torch.float16), m.to(device, torch.bfloat16), 8)  # mixed dtypes: fp32 dot


def case_random_float(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(7)
    q, m = torch.randn(5, 19, generator=gen), torch.randn(60, 19, generator=gen)
    q, m = q / q.norm(dim=1, keepdim=True), m / m.norm(dim=1, keepdim=True)
    _compare(q.to(device), m.to(device), 7, exact=False)
    _compare(q.to(device, torch.bfloat16), m.to(device, torch.bfloat16), 7, exact=False)


def case_non_contiguous(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(8)
    q = _ints((9, 4), -2, 3, gen).to(device).T  # [4, 9] with strides (1, 4)
    m = _ints((50, 18), -2, 3, gen).to(device)[::2, ::2]  # [25, 9] strided
    _compare(q, m, 6)


def case_large_k(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(9)
    q, m = _ints((2, 5), -1, 2, gen), _ints((100, 5), -1, 2, gen)
    _compare(q.to(device), m.to(device), 17)  # 32-row tiles: four of them, many ties across tiles
    _compare(q.to(device), m[:40].to(device), TRITON_TOPK_MAX_K)  # the largest on-chip k (> N: padded)


def case_non_finite(device: torch.device) -> None:
    q, m = torch.ones(2, 3), torch.ones(20, 3)
    m[13, 1] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        triton_bank_topk(q.to(device), m.to(device), 3)
    big = torch.full((2, 3), 3e38)
    with pytest.raises(ValueError, match="non-finite"):  # finite inputs whose products overflow fp32
        triton_bank_topk(big.to(device), big.to(device), 1)


CASES = collect_cases(globals())
#: exclusions checked for a bank of 4 rows, not this call's 5
_FOREIGN = Exclusions.check(
    torch.ones(2, 3), 4, query_labels=torch.zeros(2).long(), bank_labels=torch.zeros(4).long()
)


# ------------------------------------------------------------------------------------------ tests


kernel_results, test_compiled_kernel_matches_reference, test_interpreted_kernel_matches_reference = (
    case_tests(__file__, CASES)
)


def test_triton_available_reports_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_available()[0] is True
    monkeypatch.delenv("TRITON_INTERPRET")
    ok, reason = triton_available()
    assert ok == torch.cuda.is_available() and reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-driver error")
def test_refuses_to_run_without_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        triton_bank_topk(torch.ones(2, 3), torch.ones(5, 3), 2)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.ones(2, 3), [(torch.ones(5, 3), 1.0)], 2), "single"),
        ((torch.ones(2, 3), torch.ones(5, 4), 2), "queries must have D = 4"),
        ((torch.ones(2, 3), torch.ones(5, 3), 0), "k must be"),
        ((torch.ones(2, 3).long(), torch.ones(5, 3), 2), "queries must be a 2-D"),
        ((torch.ones(2, 3), torch.ones(5, 3), 2, {"self_index": None}), "exclusions must be an Exclusions"),
        ((torch.ones(2, 3), torch.ones(5, 3), 2, _FOREIGN), r"exclusions.bank_labels must be .* length 5"),
    ],
)
def test_bad_arguments_raise_value_error(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        triton_bank_topk(*args)


def test_large_k_uses_reference() -> None:
    gen = torch.Generator().manual_seed(10)
    q, m = torch.randn(3, 6, generator=gen), torch.randn(400, 6, generator=gen)
    labels = torch.tensor([0, 1, 2]), torch.randint(0, 3, (400,), generator=gen)
    kw = {"query_labels": labels[0], "bank_labels": labels[1], "self_index": torch.tensor([5, -1, 9])}
    got = triton_bank_topk(q, m, TRITON_TOPK_MAX_K + 72, Exclusions.check(q, 400, **kw))
    want = ref.bank_topk(q, m, TRITON_TOPK_MAX_K + 72, **kw)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


if __name__ == "__main__":
    print_case_results(CASES)
