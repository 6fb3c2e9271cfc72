"""The kernels' input checks: what each accepts and returns, and that every error names the argument and
what was expected; the checked Exclusions value and the check that it fits a backend's call."""

from __future__ import annotations

import math

import pytest
import torch

from reidscale.kernels import checks
from reidscale.kernels.checks import Exclusions

Q = torch.ones(3, 4)  # B = 3 queries of D = 4; the bank below has N = 5 rows
LONG3, LONG5 = torch.zeros(3, dtype=torch.long), torch.zeros(5, dtype=torch.long)


# ------------------------------------------------------------------------------------------ generic


@pytest.mark.parametrize("value", [1, "yes", None])
def test_check_bool_rejects_non_bools(value: object) -> None:
    with pytest.raises(ValueError, match="normalize must be a bool"):
        checks.check_bool("normalize", value)
    assert checks.check_bool("normalize", False) is False


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "8"])
def test_optional_positive_int_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"bank_chunk must be None or an int >= 1, got"):
        checks.check_optional_positive_int("bank_chunk", value)


def test_optional_positive_int_accepts() -> None:
    assert checks.check_optional_positive_int("splits", None) is None
    assert checks.check_optional_positive_int("splits", 7) == 7


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (
            torch.ones(3, 4, dtype=torch.float64),
            r"queries must be a 2-D float32/float16/bfloat16 tensor, got a ",
        ),
        (torch.ones(3), "queries must be a 2-D"),
        ([[1.0]], "got list"),
        (torch.ones(3, 4, device="meta"), r"queries must be on cpu \(the queries' device\), got meta"),
    ],
)
def test_check_features_errors(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        checks.check_features("queries", value, checks.FUSED_DTYPES, torch.device("cpu"))


def test_check_index_vector_returns_int64_and_names_errors() -> None:
    vec = checks.check_index_vector(
        "bank_cams", torch.tensor([1, 2], dtype=torch.int8), 2, torch.device("cpu")
    )
    assert vec.dtype == torch.int64 and vec.tolist() == [1, 2]
    for bad in (torch.tensor([1.0, 2.0]), torch.tensor([True, False]), torch.zeros(3, dtype=torch.long)):
        with pytest.raises(ValueError, match="bank_cams must be a 1-D integer tensor of length 2"):
            checks.check_index_vector("bank_cams", bad, 2, torch.device("cpu"))


def test_check_same_device_lists_the_devices() -> None:
    with pytest.raises(ValueError, match=r"all tensors must be on one device, got .*'bank': device"):
        checks.check_same_device(queries=torch.ones(1), bank=torch.ones(1, device="meta"))


# ---------------------------------------------------------------------------------------- bank_topk


def test_check_banks_gives_weighted_pairs() -> None:
    storage = torch.ones(5, 6)
    assert [(rows.shape, w) for rows, w in checks.check_banks(torch.ones(3, 6), storage)] == [((5, 6), 1.0)]
    pairs = checks.check_banks(torch.ones(3, 6), [(storage[:, :2], 0.5), (storage[:, 2:], 2)])
    assert [(rows.shape[1], w) for rows, w in pairs] == [(2, 0.5), (4, 2.0)]
    assert isinstance(pairs[1][1], float)


def test_check_single_bank_names_the_kernel() -> None:
    with pytest.raises(ValueError, match=r"bank must be a single .* for the Triton kernel, got list"):
        checks.check_single_bank("Triton", Q, [(torch.ones(5, 4), 1.0)])
    with pytest.raises(ValueError, match="queries must have D = 3"):
        checks.check_single_bank("CUDA", Q, torch.ones(5, 3))


@pytest.mark.parametrize("k", [0, 4097, 2.0, True])
def test_check_k_range(k: object) -> None:
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 4096\]"):
        checks.check_k(k)


def test_exclusions_check_normalises() -> None:
    ex = Exclusions.check(
        Q,
        5,
        query_labels=torch.tensor([0, 1, 2], dtype=torch.int32),
        bank_labels=LONG5,
        self_index=torch.tensor([4, -1, 0], dtype=torch.int16),
        query_cams=LONG3,
        bank_cams=LONG5,
        cam_penalty=0,
    )
    assert ex.labels[0].dtype == torch.int64 and ex.labels[0].tolist() == [0, 1, 2]
    assert ex.self_index.dtype == torch.int64
    assert ex.cams is None and ex.penalty == 0.0 and isinstance(ex.penalty, float)  # a zero penalty: no cams
    ex = Exclusions.check(Q, 5, query_cams=LONG3, bank_cams=LONG5, cam_penalty=1)
    assert ex.cams is not None and ex.penalty == 1.0 and ex.labels is None and ex.self_index is None
    nothing = Exclusions()
    assert nothing.labels is None and nothing.self_index is None and nothing.cams is None


def test_exclusions_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Exclusions().penalty = 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query_labels": LONG3}, "query_labels and bank_labels must be given together"),
        ({"bank_cams": LONG5}, "query_cams and bank_cams must be given together"),
        (
            {"query_labels": LONG3, "bank_labels": LONG3},
            "bank_labels must be a 1-D integer tensor of length 5",
        ),
        ({"query_labels": LONG3.float(), "bank_labels": LONG5}, "query_labels must be a 1-D integer tensor"),
        ({"self_index": torch.tensor([0, 1, 5])}, r"self_index values must be in \[-1, N\) = \[-1, 5\)"),
        ({"self_index": torch.tensor([-2, 1, 0])}, r"got range \[-2, 1\]"),
        ({"cam_penalty": 0.5}, "cam_penalty != 0 needs query_cams and bank_cams"),
        ({"cam_penalty": math.nan, "query_cams": LONG3, "bank_cams": LONG5}, "cam_penalty must be a finite"),
        ({"cam_penalty": True}, "cam_penalty must be a finite float, got True"),
    ],
)
def test_exclusions_check_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Exclusions.check(Q, 5, **kwargs)


def test_check_exclusions_fits_the_call() -> None:
    ex = Exclusions.check(Q, 5, query_labels=LONG3, bank_labels=LONG5, self_index=-torch.ones(3).long())
    assert checks.check_exclusions(ex, Q, 5) is ex
    assert isinstance(checks.check_exclusions(None, Q, 5), Exclusions)
    with pytest.raises(ValueError, match=r"exclusions.bank_labels must be an int64 vector of length 6"):
        checks.check_exclusions(ex, Q, 6)
    with pytest.raises(ValueError, match=r"exclusions.self_index must be an int64 vector of length 2"):
        checks.check_exclusions(ex, torch.ones(2, 4), 5)
    with pytest.raises(ValueError, match=r"exclusions.self_index must be an int64 vector .* on meta"):
        checks.check_exclusions(ex, Q.to("meta"), 5)
    unchecked = Exclusions(labels=(LONG3.int(), LONG5))  # built without Exclusions.check
    with pytest.raises(ValueError, match="query_labels must be an int64 vector"):
        checks.check_exclusions(unchecked, Q, 5)
    with pytest.raises(ValueError, match=r"exclusions must be an Exclusions .*got dict"):
        checks.check_exclusions({"query_labels": LONG3}, Q, 5)


def test_check_topk_call_checks_in_the_signature_order() -> None:
    no_exclusions = dict.fromkeys(("query_labels", "bank_labels", "self_index", "query_cams", "bank_cams"))
    base = {**no_exclusions, "cam_penalty": 0.0, "return_positive_scores": False, "bank_chunk": None}
    call = checks.check_topk_call(Q, torch.ones(5, 4), 2, **base)
    assert call.k == 2 and call.bank_chunk is None and call.return_positive_scores is False
    assert isinstance(call.exclusions, Exclusions) and len(call.banks) == 1
    with pytest.raises(ValueError, match="k must be"):  # k before bank_chunk and the exclusions
        checks.check_topk_call(Q, torch.ones(5, 4), 0, **{**base, "bank_chunk": 0, "cam_penalty": 1.0})
    with pytest.raises(ValueError, match="bank_chunk must be None or an int >= 1"):
        checks.check_topk_call(Q, torch.ones(5, 4), 2, **{**base, "bank_chunk": 0, "cam_penalty": 1.0})
    with pytest.raises(ValueError, match="return_positive_scores=True needs query_labels"):
        checks.check_topk_call(Q, torch.ones(5, 4), 2, **{**base, "return_positive_scores": True})
    with pytest.raises(ValueError, match="return_positive_scores must be a bool, got int"):
        checks.check_topk_call(Q, torch.ones(5, 4), 2, **{**base, "return_positive_scores": 1})


# ------------------------------------------------------------------------------ losses and bank update


def test_accumulation_dtype() -> None:
    half, double = torch.ones(1, dtype=torch.float16), torch.ones(1, dtype=torch.float64)
    assert checks.accumulation_dtype(half, half) == torch.float32
    assert checks.accumulation_dtype(half, double) == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of candidates"),
        ({"candidates": 1, "positives": 1}, "exactly one of candidates"),
        ({"positives": 1, "weights": 1}, "weights goes with candidates"),
        ({"candidates": 1, "positive_weights": 1}, "positive_weights goes with positives"),
    ],
)
def test_check_loss_form(kwargs: dict, match: str) -> None:
    args = {"candidates": None, "weights": None, "positives": None, "positive_weights": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        checks.check_loss_form(**args)


def test_check_full_inputs_defaults() -> None:
    positives = torch.tensor([[0, -1], [1, 2]])
    out = checks.check_full_inputs(
        torch.ones(2, 3), torch.ones(4, 3, dtype=torch.float64), positives, None, 1
    )
    queries, bank, _, weights, temperature, chunk = out
    assert weights.dtype == torch.float64 and weights.tolist() == [[1.0, 0.0], [0.5, 0.5]]
    assert temperature == 1.0 and isinstance(temperature, float) and chunk == 4
    assert checks.check_full_inputs(queries, bank, positives, None, 0.1, 3)[-1] == 3
    assert checks.check_full_inputs(queries, bank, positives, None, 0.1, 99)[-1] == 4  # at most N


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.ones(2, 3), torch.ones(4, 2)), "queries and bank must share the feature size D, got 3 and 2"),
        ((torch.ones(2, 3), torch.ones(0, 3)), "bank must have at least one row, got N = 0"),
        ((torch.ones(2, 3, dtype=torch.int32), torch.ones(4, 3)), "queries must be a 2-D float16/bfloat16/"),
    ],
)
def test_check_queries_and_bank_errors(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        checks.check_queries_and_bank(*args)


def test_check_weights_and_index_matrix_errors() -> None:
    padding = torch.tensor([[False, True]])
    with pytest.raises(ValueError, match="weights must be 0 wherever the index is -1"):
        checks.check_weights("weights", torch.tensor([[1.0, 1.0]]), padding)
    with pytest.raises(ValueError, match="weights must be finite and non-negative"):
        checks.check_weights("weights", torch.tensor([[math.inf, 0.0]]), padding)
    with pytest.raises(ValueError, match=r"candidates values must lie in \[-1, 4\)"):
        checks.check_index_matrix("candidates", torch.tensor([[4]]), 1, 4)
    with pytest.raises(ValueError, match="candidates must have 2 rows"):
        checks.check_index_matrix("candidates", torch.tensor([[0]]), 2, 4)


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, "0.1", True])
def test_check_temperature(temperature: object) -> None:
    with pytest.raises(ValueError, match="temperature must be"):
        checks.check_temperature(temperature)


def test_check_update_inputs() -> None:
    bank, indices, features, momentum = checks.check_update_inputs(
        torch.zeros(4, 3), torch.tensor([0, 3]), torch.ones(2, 3), 1
    )
    assert momentum == 1.0 and isinstance(momentum, float)
    with pytest.raises(ValueError, match=r"momentum must be a float in \[0, 1\], got -0.5"):
        checks.check_update_inputs(bank, indices, features, -0.5)
    with pytest.raises(ValueError, match=r"indices values must lie in \[0, 4\)"):
        checks.check_update_inputs(bank, torch.tensor([0, 4]), features, 0.5)
