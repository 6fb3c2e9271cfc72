"""The kernel dispatch point: backend choice (from the declared support tables), REIDSCALE_KERNELS,
warn-once fallbacks, multi-bank fusion, positive scores of the fused backends, and the public ops on the
torch backend against the reference.

The public ops on the Triton backend run end to end under the Triton interpreter in one subprocess (the
interpreter must be switched on before triton kernels are defined, so it cannot be toggled in-process).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from reidscale.kernels import dispatch, support
from reidscale.kernels import reference_loss as ref_loss
from reidscale.kernels import reference_topk as ref_topk
from reidscale.kernels.checks import Exclusions
from tests.support.processes import run_command


@pytest.fixture(autouse=True)
def _fresh_dispatch(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dispatch.reset_backend_cache()
    yield
    dispatch.reset_backend_cache()


CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------- choosing


@pytest.mark.parametrize("value", ["", "auto", "AUTO", " torch "])
def test_requested_backend_accepts_auto_and_names(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(dispatch.BACKEND_ENV, value)
    assert dispatch.requested_backend() == ("torch" if "torch" in value else None)


def test_requested_backend_rejects_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.BACKEND_ENV, "cudnn")
    with pytest.raises(ValueError, match="REIDSCALE_KERNELS must be one of auto, cuda, triton, torch"):
        dispatch.choose_backend("bank_topk", CPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
@pytest.mark.parametrize("op", sorted(support.OP_BACKENDS))
def test_cpu_tensors_go_to_torch_silently(op: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.choose_backend(op, CPU) == "torch"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
@pytest.mark.parametrize(("forced", "reason"), [("triton", "TRITON_INTERPRET"), ("cuda", "no CUDA GPU")])
def test_forced_backend_that_cannot_run_warns_once(
    monkeypatch: pytest.MonkeyPatch, forced: str, reason: str
) -> None:
    monkeypatch.setenv(dispatch.BACKEND_ENV, forced)
    with pytest.warns(dispatch.KernelFallbackWarning, match=reason) as record:
        assert dispatch.choose_backend("bank_topk", CPU) == "torch"
    assert f"REIDSCALE_KERNELS={forced}" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same reason again: silent
        assert dispatch.choose_backend("bank_topk", CPU) == "torch"


def test_forced_backend_without_the_op_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.BACKEND_ENV, "cuda")
    with pytest.warns(dispatch.KernelFallbackWarning, match="has no bank_update kernel"):
        assert dispatch.choose_backend("bank_update", CPU) == "torch"


def test_interpreter_serves_cpu_tensors_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.choose_backend("bank_topk", CPU) == "torch"  # auto: no slow interpreter by surprise
    monkeypatch.setenv(dispatch.BACKEND_ENV, "triton")
    assert dispatch.choose_backend("bank_topk", CPU) == "triton"
    unsupported = {"triton": "k = 500 > 128"}
    with pytest.warns(dispatch.KernelFallbackWarning, match=r"k = 500 > 128\); using torch"):
        assert dispatch.choose_backend("bank_topk", CPU, unsupported) == "torch"


def test_op_backends_are_the_backends_whose_table_lists_the_op() -> None:
    assert support.KERNEL_BACKENDS == ("cuda", "triton", "torch")
    assert support.OP_BACKENDS == {
        "bank_topk": ("cuda", "triton", "torch"),
        "bank_contrastive_loss": ("triton", "torch"),
        "bank_update": ("triton", "torch"),
    }


@pytest.mark.parametrize(
    ("op", "call", "reason"),
    [
        ("bank_topk", {"k": 129}, "k = 129 > 128"),
        ("bank_topk", {"rows": 2**32 - 1}, f"N = {2**32 - 1} > {2**32 - 2}"),
        ("bank_update", {"dim": 8193}, "D = 8193 > 8192"),
        ("bank_update", {"dtypes": (torch.float32, torch.float64)}, "float64 inputs"),
        ("bank_contrastive_loss", {"dtypes": (torch.float64,)}, "float64 inputs"),
    ],
)
def test_declared_limits_send_a_call_to_torch(
    monkeypatch: pytest.MonkeyPatch, op: str, call: dict, reason: str
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(dispatch.BACKEND_ENV, "triton")
    limits = {"k": 128, "dim": 8192, "rows": 2**32 - 2}
    assert (
        dispatch.choose_backend(op, CPU, **{name: limits[name] for name in call if name in limits})
        == "triton"
    )
    with pytest.warns(dispatch.KernelFallbackWarning, match=rf"\({reason}.*\); using torch"):
        assert dispatch.choose_backend(op, CPU, **call) == "torch"


def test_choose_backend_reads_the_support_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(dispatch.BACKEND_ENV, "triton")
    assert dispatch.choose_backend("bank_topk", CPU, k=100) == "triton"
    triton = support.BACKEND_SUPPORT["triton"]
    narrower = dict(triton.ops, bank_topk=support.OpLimits(support.FUSED_DTYPES, max_k=64))
    monkeypatch.setitem(support.BACKEND_SUPPORT, "triton", dataclasses.replace(triton, ops=narrower))
    with pytest.warns(dispatch.KernelFallbackWarning, match=r"k = 100 > 64"):
        assert dispatch.choose_backend("bank_topk", CPU, k=100) == "torch"
    no_interpreter = dataclasses.replace(triton, interpreted_devices=())
    monkeypatch.setitem(support.BACKEND_SUPPORT, "triton", no_interpreter)
    with pytest.warns(dispatch.KernelFallbackWarning, match="the triton backend runs on CUDA tensors"):
        assert dispatch.choose_backend("bank_update", CPU) == "torch"


def test_a_call_no_backend_serves_is_an_error() -> None:
    with pytest.raises(
        ValueError, match=r"no kernel backend serves this bank_topk call: .*torch: k = 5000 > 4096"
    ):
        dispatch.choose_backend("bank_topk", CPU, k=5000)


def test_kernels_read_their_limits_from_the_support_table() -> None:
    pytest.importorskip("triton")
    from reidscale.kernels.triton import bank_topk, bank_update

    assert bank_topk.TRITON_TOPK_MAX_K is support.TRITON_TOPK_MAX_K
    assert bank_update.TRITON_UPDATE_MAX_D is support.TRITON_UPDATE_MAX_D
    assert support.BACKEND_SUPPORT["triton"].ops["bank_topk"].max_k == support.TRITON_TOPK_MAX_K
    assert support.BACKEND_SUPPORT["triton"].ops["bank_update"].max_dim == support.TRITON_UPDATE_MAX_D
    assert not hasattr(bank_topk, "TRITON_MAX_K") and not hasattr(bank_update, "TRITON_MAX_UPDATE_D")


def test_dispatch_report_lists_every_op() -> None:
    report = dispatch.dispatch_report()
    assert report["requested"] == "auto"
    assert set(report["backends"]) == {"cuda", "triton", "torch"}
    assert report["backends"]["torch"]["usable"] is True
    for op, order in support.OP_BACKENDS.items():
        assert report["ops"][op]["order"] == list(order)
        assert report["ops"][op]["cpu_tensors"] == "torch"


def test_dispatch_report_carries_a_bad_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.BACKEND_ENV, "fast")
    report = dispatch.dispatch_report()
    assert "REIDSCALE_KERNELS" in report["error"] and report["requested"] == "fast"


# ---------------------------------------------------------------------------------- multi-bank fusion


def _weighted_score(queries: torch.Tensor, banks: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    scores, offset = 0.0, 0
    for rows, weight in banks:
        scores = scores + weight * (queries[:, offset : offset + rows.shape[1]] @ rows.T)
        offset += rows.shape[1]
    return scores


def test_adjacent_column_blocks_fuse_into_one_view() -> None:
    gen = torch.Generator().manual_seed(0)
    storage = torch.randn(40, 3, 4, generator=gen)  # global + 2 stripes side by side: [N, 3, D']
    banks = [(storage[:, 0], 0.5), (storage[:, 1], 0.25), (storage[:, 2], 0.25)]
    queries = torch.randn(6, 12, generator=gen)
    fused = dispatch._fuse_adjacent_banks(queries, banks)
    assert fused is not None
    fused_queries, fused_bank = fused
    assert fused_bank.data_ptr() == storage.data_ptr() and fused_bank.shape == (40, 12)  # a view, no copy
    torch.testing.assert_close(fused_queries @ fused_bank.T, _weighted_score(queries, banks))


def test_single_unit_bank_passes_through_and_scaled_bank_fuses() -> None:
    queries, bank = torch.randn(3, 5), torch.randn(9, 5)
    assert dispatch._fuse_adjacent_banks(queries, [(bank, 1.0)]) == (queries, bank)
    fused_queries, fused_bank = dispatch._fuse_adjacent_banks(queries, [(bank, 2.0)])
    assert fused_bank is bank or fused_bank.data_ptr() == bank.data_ptr()
    torch.testing.assert_close(fused_queries, 2.0 * queries)


def test_separate_or_reordered_banks_do_not_fuse() -> None:
    storage = torch.randn(10, 2, 3)
    queries = torch.randn(2, 6)
    assert (
        dispatch._fuse_adjacent_banks(queries, [(torch.randn(10, 3), 1.0), (torch.randn(10, 3), 1.0)]) is None
    )
    assert dispatch._fuse_adjacent_banks(queries, [(storage[:, 1], 1.0), (storage[:, 0], 1.0)]) is None
    gapped = torch.randn(10, 9)
    assert dispatch._fuse_adjacent_banks(queries, [(gapped[:, 0:3], 1.0), (gapped[:, 4:7], 1.0)]) is None


# ------------------------------------------------------------------------------------ positive scores


def _int_features(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randint(-2, 3, shape, generator=gen).to(torch.float32)  # exact dot products, real ties


@pytest.mark.parametrize("with_cams", [False, True])
def test_positive_scores_equal_the_reference(with_cams: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    queries, bank = _int_features((7, 5), gen), _int_features((60, 5), gen)
    options = {
        "query_labels": torch.tensor([0, 1, 2, 3, 0, 9, 1]),  # label 9: no positive at all
        "bank_labels": torch.randint(0, 4, (60,), generator=gen),
        "self_index": torch.tensor([3, -1, 10, 59, -1, 0, 7]),
        "query_cams": torch.randint(0, 3, (7,), generator=gen) if with_cams else None,
        "bank_cams": torch.randint(0, 3, (60,), generator=gen) if with_cams else None,
        "cam_penalty": 1.5 if with_cams else 0.0,
    }
    options["bank_labels"][[3, 10]] = torch.tensor([0, 2])  # selves that are label-positives too
    got = dispatch._positive_scores(queries, bank, Exclusions.check(queries, 60, **options))
    want = ref_topk.bank_topk(queries, bank, 4, return_positive_scores=True, **options)[2:]
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


def test_positive_scores_need_labels() -> None:
    with pytest.raises(ValueError, match="needs query_labels and bank_labels"):
        dispatch.bank_topk(torch.ones(2, 3), torch.ones(4, 3), 2, return_positive_scores=True)


# ------------------------------------------------------------------------------ public ops, torch backend


def test_bank_topk_torch_backend_is_the_reference() -> None:
    gen = torch.Generator().manual_seed(2)
    queries, bank = torch.randn(5, 8, generator=gen), torch.randn(70, 8, generator=gen)
    labels = torch.randint(0, 5, (5,), generator=gen), torch.randint(0, 5, (70,), generator=gen)
    kw = {"query_labels": labels[0], "bank_labels": labels[1], "return_positive_scores": True}
    got = dispatch.bank_topk(queries, bank, 9, **kw)
    want = ref_topk.bank_topk(queries, bank, 9, **kw)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def _loss_problem(seed: int):
    gen = torch.Generator().manual_seed(seed)
    queries = F.normalize(torch.randn(6, 10, generator=gen), dim=1)
    bank = F.normalize(torch.randn(50, 10, generator=gen), dim=1)
    positives = torch.randint(0, 50, (6, 3), generator=gen)
    positives[1, 2] = -1
    return queries, bank, positives, gen


def test_whole_bank_loss_torch_backend_matches_reference_and_grad() -> None:
    queries, bank, positives, _ = _loss_problem(3)
    q1, q2 = queries.clone().requires_grad_(True), queries.clone().requires_grad_(True)
    got = dispatch.bank_contrastive_loss(q1, bank, 0.07, positives=positives, bank_chunk=16)
    want = ref_loss.bank_contrastive_loss_full(q2, bank, positives, None, 0.07)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    torch.testing.assert_close(q1.grad, q2.grad)


def test_candidate_loss_torch_backend_matches_reference() -> None:
    queries, bank, candidates, gen = _loss_problem(4)
    weights = torch.rand(candidates.shape, generator=gen).where(candidates >= 0, 0.0)
    got = dispatch.bank_contrastive_loss(queries, bank, 0.1, candidates=candidates, weights=weights)
    want = ref_loss.bank_contrastive_loss_candidates(queries, bank, candidates, weights, 0.1)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of candidates"),
        (
            {
                "candidates": torch.zeros(2, 1, dtype=torch.int64),
                "positives": torch.zeros(2, 1, dtype=torch.int64),
            },
            "exactly one",
        ),
        (
            {"positives": torch.zeros(2, 1, dtype=torch.int64), "weights": torch.ones(2, 1)},
            "weights goes with candidates",
        ),
        (
            {"candidates": torch.zeros(2, 1, dtype=torch.int64), "positive_weights": torch.ones(2, 1)},
            "positive_weights goes",
        ),
        ({"positives": torch.full((2, 1), 7, dtype=torch.int64)}, r"positives values must lie in \[-1, 4\)"),
    ],
)
def test_loss_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dispatch.bank_contrastive_loss(torch.ones(2, 3), torch.ones(4, 3), 0.1, **kwargs)


def test_bank_update_torch_backend_is_the_reference() -> None:
    gen = torch.Generator().manual_seed(5)
    bank = F.normalize(torch.randn(12, 4, generator=gen), dim=1)
    indices, features = torch.tensor([3, 7, 3, 0]), torch.randn(4, 4, generator=gen)
    want = bank.clone()
    ref_loss.bank_update(want, indices, features, 0.5)
    dispatch.bank_update(bank, indices, features, 0.5)
    assert torch.equal(bank, want)
    with pytest.raises(ValueError, match="normalize must be a bool"):
        dispatch.bank_update(bank, indices, features, 0.5, normalize="yes")


# ---------------------------------------------------------------- public ops, Triton backend (interpreter)

_TRITON_SCRIPT = r"""
import json, torch, torch.nn.functional as F, warnings
from reidscale.kernels import bank_topk, bank_contrastive_loss, bank_update, choose_backend
from reidscale.kernels import reference_topk as ref_topk, reference_loss as ref_loss
warnings.simplefilter("error")  # a fallback where triton should serve would fail the run
cpu, out = torch.device("cpu"), {}
gen = torch.Generator().manual_seed(0)
ints = lambda *s: torch.randint(-2, 3, s, generator=gen).to(torch.float32)

storage = ints(45, 3, 4)  # adjacent global + 2 stripes
banks = [(storage[:, 0], 0.5), (storage[:, 1], 0.25), (storage[:, 2], 0.25)]
q = ints(5, 12)
labels = torch.randint(0, 4, (5,), generator=gen), torch.randint(0, 4, (45,), generator=gen)
kw = dict(query_labels=labels[0], bank_labels=labels[1], self_index=torch.tensor([0, 4, -1, 44, 2]))
out["topk_backend"] = choose_backend("bank_topk", cpu)
got = bank_topk(q, banks, 6, return_positive_scores=True, **kw)
want = ref_topk.bank_topk(q, banks, 6, return_positive_scores=True, **kw)
out["topk_multibank"] = all(torch.equal(a, b) for a, b in zip(got, want))

qf = F.normalize(torch.randn(4, 9, generator=gen), dim=1)
mf = F.normalize(torch.randn(37, 9, generator=gen), dim=1)
pos = torch.randint(0, 37, (4, 2), generator=gen)
q1, q2 = qf.clone().requires_grad_(True), qf.clone().requires_grad_(True)
a = bank_contrastive_loss(q1, mf, 0.1, positives=pos)
b = ref_loss.bank_contrastive_loss_full(q2, mf, pos, None, 0.1)
a.backward(); b.backward()
out["full_loss"] = [abs(float(a.detach() - b.detach())), float((q1.grad - q2.grad).abs().max())]

cand = torch.randint(-1, 37, (4, 5), generator=gen); cand[:, 0] = 1
w = torch.rand(4, 5, generator=gen).where(cand >= 0, 0.0)
q1, q2 = qf.clone().requires_grad_(True), qf.clone().requires_grad_(True)
a = bank_contrastive_loss(q1, mf, 0.1, candidates=cand, weights=w)
b = ref_loss.bank_contrastive_loss_candidates(q2, mf, cand, w, 0.1)
a.backward(); b.backward()
out["candidate_loss"] = [abs(float(a.detach() - b.detach())), float((q1.grad - q2.grad).abs().max())]

bank1, bank2 = mf.clone(), mf.clone()
idx, feats = torch.tensor([5, 1, 5, 36]), torch.randn(4, 9, generator=gen)
bank_update(bank1, idx, feats, 0.5)
ref_loss.bank_update(bank2, idx, feats, 0.5)
out["update"] = float((bank1 - bank2).abs().max())
print(json.dumps(out))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the Triton backend natively")
def test_public_ops_on_the_triton_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", dispatch.BACKEND_ENV: "triton"}
    proc = run_command([sys.executable, "-c", _TRITON_SCRIPT], env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["topk_backend"] == "triton"
    assert out["topk_multibank"] is True
    for name in ("full_loss", "candidate_loss"):
        loss_err, grad_err = out[name]
        assert loss_err < 1e-5 and grad_err < 1e-5, (name, out[name])
    assert out["update"] < 1e-6
