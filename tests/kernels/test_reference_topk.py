"""The reference bank_topk against an independent brute force (full fp64 B×N matrix in numpy, lexsort)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from reidscale.kernels.reference_topk import bank_topk
from reidscale.kernels.support import BANK_TOPK_MAX_K

LOW = (torch.float16, torch.bfloat16)
ALL_DTYPES = (torch.float32, *LOW)


# ------------------------------------------------------------------------------------------ brute force


def brute_topk(
    queries,
    banks,
    k,
    *,
    q_labels=None,
    b_labels=None,
    self_index=None,
    q_cams=None,
    b_cams=None,
    penalty=0.0,
    positives=False,
):
    """(scores [B, k] float64, indices [B, k]) by the definition; positives=True: the label-positives."""
    q = queries.double().numpy()
    full = np.zeros((q.shape[0], banks[0][0].shape[0]))
    offset = 0
    for rows, weight in banks:
        m = rows.double().numpy()
        full += weight * (q[:, offset : offset + m.shape[1]] @ m.T)
        offset += m.shape[1]
    if q_cams is not None:
        full -= penalty * (q_cams.numpy()[:, None] == b_cams.numpy()[None, :])
    n_ids = np.arange(full.shape[1])
    out_s = np.full((q.shape[0], k), -np.inf)
    out_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    for b in range(q.shape[0]):
        pos = np.zeros(full.shape[1], bool) if q_labels is None else b_labels.numpy() == int(q_labels[b])
        is_self = n_ids == (-1 if self_index is None else int(self_index[b]))
        keep = (pos & ~is_self) if positives else ~(pos | is_self)
        cand = n_ids[keep]
        cand = cand[np.lexsort((cand, -full[b, cand]))][:k]
        out_s[b, : len(cand)] = full[b, cand]
        out_i[b, : len(cand)] = cand
    return out_s, out_i


def int_features(gen, shape, low=-2, high=3):
    """Small integers: every product and sum is exact in fp32, and exactly representable in fp16/bf16."""
    return torch.randint(low, high, shape, generator=gen).to(torch.float32)


def make_case(seed, batch, rows, dim, n_labels=4, n_cams=3):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        queries=int_features(gen, (batch, dim)),
        bank=int_features(gen, (rows, dim)),
        q_labels=torch.randint(0, n_labels, (batch,), generator=gen),
        b_labels=torch.randint(0, n_labels, (rows,), generator=gen),
        self_index=torch.randint(-1, rows, (batch,), generator=gen),
        q_cams=torch.randint(0, n_cams, (batch,), generator=gen),
        b_cams=torch.randint(0, n_cams, (rows,), generator=gen),
    )


def run_both(c, k, dtype=torch.float32, penalty=0.5, chunk=None, positives=False):
    q, m = c["queries"].to(dtype), c["bank"].to(dtype)
    got = bank_topk(
        q,
        m,
        k,
        query_labels=c["q_labels"],
        bank_labels=c["b_labels"],
        self_index=c["self_index"],
        query_cams=c["q_cams"],
        bank_cams=c["b_cams"],
        cam_penalty=penalty,
        bank_chunk=chunk,
        return_positive_scores=positives,
    )
    kw = dict(
        q_labels=c["q_labels"],
        b_labels=c["b_labels"],
        self_index=c["self_index"],
        q_cams=c["q_cams"],
        b_cams=c["b_cams"],
        penalty=penalty,
    )
    want = brute_topk(q, [(m, 1.0)], k, **kw)
    if positives:
        n_pos = got[2].shape[1]
        want = (*want, *brute_topk(q, [(m, 1.0)], max(n_pos, 1), positives=True, **kw))
    return got, want


def assert_exact(got, want):
    """Bitwise equal indices and scores (the data makes every score exactly representable)."""
    for g, w in zip(got, want, strict=True):
        if g.is_floating_point():
            assert g.dtype == torch.float32
            np.testing.assert_array_equal(g.double().numpy(), w)
        else:
            assert g.dtype == torch.int64
            np.testing.assert_array_equal(g.numpy(), w)


# ------------------------------------------------------------------------------------------ exact cases


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("chunk", [1, 3, 7, 16, None])
def test_exact_with_ties_labels_self_cams(dtype, chunk):
    c = make_case(seed=1, batch=9, rows=37, dim=5)  # values in [-2, 2], D=5: hundreds of equal scores
    got, want = run_both(c, k=11, dtype=dtype, chunk=chunk)
    assert_exact(got, want)
    assert (got[1] >= 0).all()  # enough candidates: no padding here


@pytest.mark.parametrize("k", [1, 2, 36, 37, 50, BANK_TOPK_MAX_K])
def test_k_range_and_padding(k):
    c = make_case(seed=2, batch=4, rows=37, dim=3)
    got, want = run_both(c, k=k, chunk=8)
    assert_exact(got, want)
    n_cand = (got[1] >= 0).sum(dim=1)
    assert (n_cand <= 37).all()
    assert torch.isneginf(got[0][got[1] < 0]).all()
    if k >= 37:
        assert (n_cand < k).all()


def test_all_equal_scores_ties_by_index():
    q, m = torch.ones(3, 4), torch.ones(10, 4)
    scores, idx = bank_topk(q, m, 6, bank_chunk=4)
    assert idx.tolist() == [list(range(6))] * 3
    assert (scores == 4.0).all()


def test_all_candidates_positive():
    c = make_case(seed=3, batch=5, rows=12, dim=4)
    c["q_labels"], c["b_labels"] = torch.zeros(5, dtype=torch.long), torch.zeros(12, dtype=torch.long)
    got, want = run_both(c, k=4, chunk=5, positives=True)
    assert_exact(got, want)
    assert (got[1] == -1).all() and torch.isneginf(got[0]).all()
    self_in_bank = (c["self_index"] >= 0).to(torch.int64)
    assert got[3].shape == (5, 12 - int(self_in_bank.min()))
    assert ((got[3] >= 0).sum(dim=1) == 12 - self_in_bank).all()


def test_batch_of_one_odd_dim():
    c = make_case(seed=4, batch=1, rows=29, dim=7)
    got, want = run_both(c, k=5, chunk=6, positives=True)
    assert_exact(got, want)


def test_non_contiguous_inputs():
    c = make_case(seed=5, batch=6, rows=40, dim=5)
    q_t = c["queries"].T.contiguous().T  # transposed storage
    storage = torch.zeros(80, 9)
    storage[::2, 1::2] = c["bank"][:, :4]
    storage[::2, 8] = c["bank"][:, 4]
    rows = storage[::2]  # row stride 18; columns 1, 3, 5, 7 (stride 2) then column 8: the same bank
    labels = torch.stack([c["b_labels"], c["b_labels"]], dim=1)[:, 1]  # element stride 2
    assert not q_t.is_contiguous() and not rows[:, 1::2].is_contiguous() and not labels.is_contiguous()
    got = bank_topk(
        q_t,
        [(rows[:, 1::2], 1.0), (rows[:, 8:], 1.0)],
        7,
        query_labels=c["q_labels"],
        bank_labels=labels,
        bank_chunk=9,
    )
    want = brute_topk(c["queries"], [(c["bank"], 1.0)], 7, q_labels=c["q_labels"], b_labels=c["b_labels"])
    assert_exact(got, want)


def test_chunk_size_does_not_change_result():
    c = make_case(seed=6, batch=7, rows=53, dim=3)
    base = run_both(c, k=20, chunk=53, positives=True)[0]
    for chunk in (1, 2, 10, 52, 1000):
        for g, b in zip(run_both(c, k=20, chunk=chunk, positives=True)[0], base, strict=True):
            assert torch.equal(g, b)


def test_cam_penalty_and_self_exclusion():
    q = torch.tensor([[1.0, 0.0]])
    m = torch.tensor([[1.0, 0.0], [0.75, 0.0], [0.5, 0.0], [0.25, 0.0]])
    cams = dict(query_cams=torch.tensor([0]), bank_cams=torch.tensor([0, 0, 1, 1]))
    s, i = bank_topk(q, m, 4, self_index=torch.tensor([0]), cam_penalty=0.5, **cams)
    assert i.tolist() == [[2, 1, 3, -1]]  # row 1: 0.75 − 0.5 (same camera) ties row 3: smaller index first
    assert s.tolist() == [[0.5, 0.25, 0.25, -math.inf]]
    _, i0 = bank_topk(q, m, 4, self_index=torch.tensor([-1]), **cams)  # penalty 0: cameras ignored
    assert i0.tolist() == [[0, 1, 2, 3]]


def test_positive_scores_returned():
    c = make_case(seed=7, batch=8, rows=45, dim=4, n_labels=3)
    got, want = run_both(c, k=6, chunk=7, positives=True)
    assert len(got) == 4
    assert_exact(got[:2], want[:2])
    p = got[2].shape[1]
    assert_exact(got[2:], (want[2][:, :p], want[3][:, :p]))
    counts = (got[3] >= 0).sum(dim=1)
    assert int(counts.max()) == p  # P is the largest positive count, nothing truncated
    assert not bool(
        ((got[3][:, :, None] == c["self_index"][:, None, None]) & (got[3][:, :, None] >= 0)).any()
    )


def test_no_positives_gives_empty_positive_tensors():
    q, m = torch.ones(2, 3), torch.ones(4, 3)
    out = bank_topk(
        q,
        m,
        2,
        query_labels=torch.tensor([7, 8]),
        bank_labels=torch.tensor([0, 1, 2, 3]),
        return_positive_scores=True,
    )
    assert out[2].shape == (2, 0) and out[3].shape == (2, 0)
    assert out[2].dtype == torch.float32 and out[3].dtype == torch.int64


def test_empty_batch_and_empty_bank():
    s, i = bank_topk(torch.ones(0, 3), torch.ones(5, 3), 4)
    assert s.shape == (0, 4) and i.shape == (0, 4)
    s, i = bank_topk(torch.ones(2, 3), torch.ones(0, 3), 4)
    assert (i == -1).all() and torch.isneginf(s).all()


# ------------------------------------------------------------------------------------- multi-bank form


def test_multi_bank_equals_weighted_concatenated_bank():
    gen = torch.Generator().manual_seed(8)
    widths, weights = (5, 3, 3, 2), (0.5, 0.125, 0.125, 2.0)  # powers of two: everything exact
    banks = [int_features(gen, (31, w)) for w in widths]
    banks[1], banks[2] = banks[1].to(torch.bfloat16), banks[2].to(torch.float16)  # dtypes may differ
    q = int_features(gen, (6, sum(widths)))
    labels = dict(query_labels=torch.arange(6) % 3, bank_labels=torch.arange(31) % 5)
    got = bank_topk(q, list(zip(banks, weights, strict=True)), 9, bank_chunk=4, **labels)
    concat = torch.cat([w * b.float() for b, w in zip(banks, weights, strict=True)], dim=1)
    single = bank_topk(q, concat, 9, bank_chunk=31, **labels)
    assert torch.equal(got[0], single[0]) and torch.equal(got[1], single[1])
    want = brute_topk(
        q,
        list(zip(banks, weights, strict=True)),
        9,
        q_labels=labels["query_labels"],
        b_labels=labels["bank_labels"],
    )
    assert_exact(got, want)


def test_selective_contrastive_distance_ranking():
    """docs/methods.md: λ_g‖g−G‖² + (1−λ_g)/8·Σ‖l−L‖² + λ_c[same cam] ascending == our descending score."""
    gen = torch.Generator().manual_seed(9)
    B, N, lam_g, lam_c = 4, 60, 0.5, 0.04
    norm = torch.nn.functional.normalize
    g, G = norm(torch.randn(B, 16, generator=gen), dim=1), norm(torch.randn(N, 16, generator=gen), dim=1)
    loc = norm(torch.randn(B, 8, 6, generator=gen), dim=2)
    L = norm(torch.randn(8, N, 6, generator=gen), dim=2)  # the 8×N×256 layout; banks are its views
    qc, bc = torch.randint(0, 3, (B,), generator=gen), torch.randint(0, 3, (N,), generator=gen)
    self_index = torch.arange(B)
    dist = lam_g * torch.cdist(g.double(), G.double()) ** 2 + lam_c * (qc[:, None] == bc[None, :])
    for s in range(8):
        dist += (1 - lam_g) / 8 * torch.cdist(loc[:, s].double(), L[s].double()) ** 2
    dist[torch.arange(B), self_index] = math.inf
    order = torch.sort(dist, dim=1, stable=True).indices[:, :20]
    gaps = torch.diff(torch.sort(dist, dim=1).values[:, :21], dim=1)
    assert float(gaps.min()) > 1e-5  # no near-ties: float32 rounding cannot reorder
    banks = [(G, lam_g)] + [(L[s], (1 - lam_g) / 8) for s in range(8)]
    queries = torch.cat([g, loc.reshape(B, -1)], dim=1)
    _, idx = bank_topk(
        queries,
        banks,
        20,
        self_index=self_index,
        query_cams=qc,
        bank_cams=bc,
        cam_penalty=lam_c / 2,
        bank_chunk=13,
    )
    assert torch.equal(idx, order)


# ------------------------------------------------------------------------ rounded (non-exact) inputs


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_gaussian_inputs_against_fp64_of_same_values(dtype):
    gen = torch.Generator().manual_seed(10)
    q = torch.randn(6, 33, generator=gen).to(dtype)
    m = torch.randn(70, 33, generator=gen).to(dtype)
    labels = dict(query_labels=torch.arange(6) % 4, bank_labels=torch.arange(70) % 4)
    scores, idx = bank_topk(q, m, 15, bank_chunk=16, **labels)
    want_s, want_i = brute_topk(
        q, [(m, 1.0)], 15, q_labels=labels["query_labels"], b_labels=labels["bank_labels"]
    )
    tol = 1e-4  # fp32 accumulation of 33 exact products (inputs are the same low-precision values)
    np.testing.assert_allclose(scores.double().numpy(), want_s, rtol=0, atol=tol)
    full = np.sort(
        brute_topk(q, [(m, 1.0)], 70, q_labels=labels["query_labels"], b_labels=labels["bank_labels"])[0],
        axis=1,
    )[:, ::-1]
    near_tie = (np.abs(want_s[:, :, None] - full[:, None, :]) < 2 * tol).sum(axis=2) > 1
    assert (~near_tie).mean() > 0.9  # the check below covers most slots
    np.testing.assert_array_equal(idx.numpy()[~near_tie], want_i[~near_tie])


# -------------------------------------------------------------------------------------------- memory


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_builds_the_batch_by_bank_matrix():
    B, N, D, k, chunk = 16, 5000, 8, 10, 64
    gen = torch.Generator().manual_seed(11)
    q, m = torch.randn(B, D, generator=gen), torch.randn(N, D, generator=gen).to(torch.bfloat16)
    labels = dict(query_labels=torch.arange(B), bank_labels=torch.arange(N) % 100)
    with LargestTensor() as mode:
        bank_topk(q, m, k, bank_chunk=chunk, return_positive_scores=True, **labels)
    assert mode.largest <= max(B * (k + 50 + chunk), chunk * D, N)  # 50 positives per label at most
    assert mode.largest < B * N // 10


# --------------------------------------------------------------------------------------------- errors


def _base():
    return dict(queries=torch.ones(3, 4), bank=torch.ones(5, 4), k=2)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(queries=torch.ones(3, 4, dtype=torch.float64)), "queries must be a 2-D float32"),
        (dict(queries=torch.ones(3)), "queries must be a 2-D"),
        (dict(bank=torch.ones(5, 3)), r"queries must have D = 3"),
        (dict(bank=torch.ones(5, 4, dtype=torch.int32)), "bank must be a 2-D float32"),
        (dict(bank=[]), "non-empty sequence"),
        (dict(bank=[(torch.ones(5, 2), 1.0), (torch.ones(6, 2), 1.0)]), "same number of rows"),
        (dict(bank=[(torch.ones(5, 2), 1.0), torch.ones(5, 2)]), r"bank\[1\] must be a \(tensor"),
        (dict(bank=[(torch.ones(5, 4), math.nan)]), r"bank\[0\]\[1\] \(the weight\) must be a finite"),
        (dict(bank=[(torch.ones(5, 4), "1")]), "weight"),
        (dict(k=0), r"k must be an int in \[1, 4096\]"),
        (dict(k=4097), r"k must be an int in \[1, 4096\]"),
        (dict(k=2.0), "k must be an int"),
        (dict(bank_chunk=0), "bank_chunk must be None or an int >= 1"),
        (dict(query_labels=torch.zeros(3, dtype=torch.long)), "query_labels and bank_labels must be given"),
        (dict(bank_cams=torch.zeros(5, dtype=torch.long)), "query_cams and bank_cams must be given"),
        (
            dict(query_labels=torch.zeros(3), bank_labels=torch.zeros(5, dtype=torch.long)),
            "query_labels must be a 1-D integer tensor of length 3",
        ),
        (
            dict(query_labels=torch.zeros(3, dtype=torch.long), bank_labels=torch.zeros(4, dtype=torch.long)),
            "bank_labels must be a 1-D integer tensor of length 5",
        ),
        (dict(self_index=torch.tensor([0, 1, 5])), r"self_index values must be in \[-1, N\)"),
        (dict(self_index=torch.tensor([0, -2, 1])), r"self_index values must be in \[-1, N\)"),
        (dict(self_index=torch.tensor([True, False, True])), "self_index must be a 1-D integer tensor"),
        (dict(cam_penalty=0.1), "cam_penalty != 0 needs query_cams and bank_cams"),
        (
            dict(
                cam_penalty=math.inf,
                query_cams=torch.zeros(3, dtype=torch.long),
                bank_cams=torch.zeros(5, dtype=torch.long),
            ),
            "cam_penalty must be a finite float",
        ),
        (dict(return_positive_scores=True), "return_positive_scores=True needs query_labels"),
        (dict(return_positive_scores=1), "return_positive_scores must be a bool"),
        (dict(queries=torch.tensor([[1.0, math.nan, 0.0, 0.0]] * 3)), "non-finite score"),
        (dict(bank=torch.full((5, 4), 3e38)), "non-finite score"),
        (dict(queries=torch.ones(3, 4, device="meta")), "bank must be on meta"),
    ],
)
def test_bad_arguments_raise(change, match):
    args = {**_base(), **change}
    with pytest.raises(ValueError, match=match):
        bank_topk(args.pop("queries"), args.pop("bank"), args.pop("k"), **args)
