"""Input checks of the memory-bank ops, shared by every backend, and the checked exclusions of ``bank_topk``.

Every public op checks its arguments here before choosing a backend, so every backend raises the same
``ValueError``, naming the argument and what was expected. The checks return what they checked in the form
the backends take (int64 index vectors, ``(rows, weight)`` bank pairs, plain floats).

:class:`Exclusions` is the one value that carries what ``bank_topk`` leaves out or penalises (label
positives, each query's own row, the same-camera penalty). It is built by one checking constructor,
:meth:`Exclusions.check`, from the op's keyword arguments; the entry points build it and every backend
(torch reference, Triton, CUDA) receives it, checked once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from reidscale.kernels.support import BANK_TOPK_MAX_K, FUSED_DTYPES, REFERENCE_DTYPES, dtype_name

# ------------------------------------------------------------------------------------------ generic


def describe_value(value: object) -> str:
    """A short description of an argument for error messages (dtype, shape, device of a tensor)."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    return type(value).__name__


def check_bool(name: str, value: object) -> bool:
    """``value`` when it is a bool.

    Raises:
        ValueError: anything else (``1`` included).
    """
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_optional_positive_int(name: str, value: object) -> int | None:
    """``value`` when it is None or an int ≥ 1 (chunk sizes, split counts).

    Raises:
        ValueError: a bool, a float, or an int < 1.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
    return value


def check_features(
    name: str, value: object, dtypes: tuple[torch.dtype, ...], device: torch.device | None = None
) -> Tensor:
    """A 2-D floating tensor of one of ``dtypes`` (on ``device``, the queries' device, when given).

    Raises:
        ValueError: not a tensor, not 2-D, another dtype, or another device.
    """
    if not isinstance(value, Tensor) or value.dim() != 2 or value.dtype not in dtypes:
        allowed = "/".join(map(dtype_name, dtypes))
        raise ValueError(f"{name} must be a 2-D {allowed} tensor, got {describe_value(value)}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} must be on {device} (the queries' device), got {value.device}")
    return value


def check_index_vector(name: str, value: object, length: int, device: torch.device) -> Tensor:
    """A 1-D integer (not bool) tensor of ``length`` on ``device``, returned as int64.

    Raises:
        ValueError: another dtype, shape or device.
    """
    integer = isinstance(value, Tensor) and not value.is_floating_point() and not value.is_complex()
    if not integer or value.dtype == torch.bool or value.dim() != 1 or value.shape[0] != length:
        raise ValueError(
            f"{name} must be a 1-D integer tensor of length {length}, got {describe_value(value)}"
        )
    if value.device != device:
        raise ValueError(f"{name} must be on {device} (the queries' device), got {value.device}")
    return value.to(torch.int64)


def check_same_device(**tensors: Tensor) -> None:
    """Raise ``ValueError`` (listing name → device) unless every tensor is on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")


# ---------------------------------------------------------------------------------------- bank_topk


def check_banks(queries: object, bank: object) -> list[tuple[Tensor, float]]:
    """``bank`` as ``(rows [N, D_i], weight)`` pairs whose widths add up to the queries' D.

    Args:
        queries: [B, D] float32/float16/bfloat16.
        bank: a [N, D] tensor (weight 1), or a non-empty sequence of ``(tensor [N, D_i], finite weight)``
            pairs with one N, on the queries' device.

    Raises:
        ValueError: naming ``queries``, ``bank`` or ``bank[i]`` and what was expected.
    """
    queries = check_features("queries", queries, FUSED_DTYPES)
    if isinstance(bank, Tensor):
        pairs: list[tuple[Tensor, float]] = [
            (check_features("bank", bank, FUSED_DTYPES, queries.device), 1.0)
        ]
    elif isinstance(bank, Sequence) and not isinstance(bank, str) and len(bank) > 0:
        pairs = [_check_bank_pair(i, item, queries.device) for i, item in enumerate(bank)]
    else:
        raise ValueError(
            "bank must be a [N, D] tensor or a non-empty sequence of (tensor, weight) pairs, "
            f"got {describe_value(bank)}"
        )
    sizes = {rows.shape[0] for rows, _ in pairs}
    if len(sizes) != 1:
        raise ValueError(f"bank: all banks must have the same number of rows N, got {sorted(sizes)}")
    width = sum(rows.shape[1] for rows, _ in pairs)
    if width != queries.shape[1]:
        raise ValueError(
            f"queries must have D = {width} columns (the sum of the bank widths), got {queries.shape[1]}"
        )
    return pairs


def _check_bank_pair(i: int, item: object, device: torch.device) -> tuple[Tensor, float]:
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise ValueError(f"bank[{i}] must be a (tensor [N, D_i], weight) pair, got {describe_value(item)}")
    rows = check_features(f"bank[{i}][0]", item[0], FUSED_DTYPES, device)
    weight = item[1]
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise ValueError(f"bank[{i}][1] (the weight) must be a finite float, got {weight!r}")
    return rows, float(weight)


def check_single_bank(kernel: str, queries: object, bank: object) -> Tensor:
    """``bank`` when it is one [N, D] tensor that fits ``queries``: what the fused kernel ``kernel`` takes.

    Raises:
        ValueError: a bank list, or anything :func:`check_banks` rejects, with the same message.
    """
    if not isinstance(bank, Tensor):
        raise ValueError(
            f"bank must be a single [N, D] tensor for the {kernel} kernel, got {describe_value(bank)}"
        )
    check_banks(queries, bank)
    return bank


def check_k(k: object) -> int:
    """``k`` when it is an int in ``[1, BANK_TOPK_MAX_K]``.

    Raises:
        ValueError: anything else.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= BANK_TOPK_MAX_K:
        raise ValueError(f"k must be an int in [1, {BANK_TOPK_MAX_K}], got {k!r}")
    return k


@dataclass(frozen=True, eq=False)
class Exclusions:
    """What ``bank_topk`` leaves out or penalises for one call, checked; build it with :meth:`check`.

    ``Exclusions()`` excludes nothing. Bank row ``n`` is excluded for query ``b`` when
    ``labels[1][n] == labels[0][b]`` (a label positive) or ``n == self_index[b]`` (the query's own row);
    ``penalty`` is subtracted from the score where ``cams[0][b] == cams[1][n]``.
    """

    #: ``(query_labels [B], bank_labels [N])`` int64, or None
    labels: tuple[Tensor, Tensor] | None = None
    #: ``[B]`` int64 in ``[-1, N)`` (−1: no own row), or None
    self_index: Tensor | None = None
    #: ``(query_cams [B], bank_cams [N])`` int64; None when absent or when ``penalty`` is 0
    cams: tuple[Tensor, Tensor] | None = None
    #: the same-camera penalty, finite
    penalty: float = 0.0

    @classmethod
    def check(
        cls,
        queries: Tensor,
        n_rows: int,
        *,
        query_labels: object = None,
        bank_labels: object = None,
        self_index: object = None,
        query_cams: object = None,
        bank_cams: object = None,
        cam_penalty: object = 0.0,
    ) -> Exclusions:
        """The checked exclusions of a call with ``queries`` [B, D] (already checked) and a bank of N rows.

        Args:
            queries: the call's [B, D] queries (their B and device).
            n_rows: the bank's N.
            query_labels, bank_labels: [B] and [N] integer tensors, given together (equal label → excluded).
            self_index: [B] integer tensor of each query's own bank row (excluded), −1 for none.
            query_cams, bank_cams: [B] and [N] integer tensors, given together.
            cam_penalty: finite float subtracted where the cameras are equal; non-zero needs the cameras.

        Raises:
            ValueError: naming the argument and what was expected.
        """
        labels = _check_pair("query_labels", query_labels, "bank_labels", bank_labels, queries, n_rows)
        cams = _check_pair("query_cams", query_cams, "bank_cams", bank_cams, queries, n_rows)
        selves = None
        if self_index is not None:
            selves = check_index_vector("self_index", self_index, queries.shape[0], queries.device)
            if selves.numel() > 0 and (int(selves.min()) < -1 or int(selves.max()) >= n_rows):
                raise ValueError(
                    f"self_index values must be in [-1, N) = [-1, {n_rows}), got range "
                    f"[{int(selves.min())}, {int(selves.max())}]"
                )
        if isinstance(cam_penalty, bool) or not isinstance(cam_penalty, int | float):
            raise ValueError(f"cam_penalty must be a finite float, got {cam_penalty!r}")
        if not math.isfinite(cam_penalty):
            raise ValueError(f"cam_penalty must be a finite float, got {cam_penalty!r}")
        if cam_penalty != 0.0 and cams is None:
            raise ValueError("cam_penalty != 0 needs query_cams and bank_cams")
        penalty = float(cam_penalty)
        return cls(labels, selves, cams if penalty != 0.0 else None, penalty)


def _check_pair(
    q_name: str, q_value: object, b_name: str, b_value: object, queries: Tensor, n_rows: int
) -> tuple[Tensor, Tensor] | None:
    """Per-query and per-row integer vectors that must be given together (labels, cameras), as int64."""
    if (q_value is None) != (b_value is None):
        raise ValueError(f"{q_name} and {b_name} must be given together (got only one of them)")
    if q_value is None:
        return None
    q_vec = check_index_vector(q_name, q_value, queries.shape[0], queries.device)
    return q_vec, check_index_vector(b_name, b_value, n_rows, queries.device)


def check_exclusions(exclusions: object, queries: Tensor, n_rows: int) -> Exclusions:
    """``exclusions`` (None: ``Exclusions()``) when its vectors fit this call: B queries, N rows, one device.

    What a backend runs on receipt; the values were checked when :meth:`Exclusions.check` built it.

    Raises:
        ValueError: not an :class:`Exclusions`, or built for another call (length or device).
    """
    if exclusions is None:
        return Exclusions()
    if not isinstance(exclusions, Exclusions):
        raise ValueError(
            f"exclusions must be an Exclusions (see Exclusions.check), got {describe_value(exclusions)}"
        )
    vectors = {"self_index": (exclusions.self_index, queries.shape[0])}
    for kind, pair in (("labels", exclusions.labels), ("cams", exclusions.cams)):
        if pair is not None:
            vectors[f"query_{kind}"] = (pair[0], queries.shape[0])
            vectors[f"bank_{kind}"] = (pair[1], n_rows)
    for name, (vector, length) in vectors.items():
        if vector is None:
            continue
        if vector.dtype != torch.int64 or vector.shape != (length,) or vector.device != queries.device:
            raise ValueError(
                f"exclusions.{name} must be an int64 vector of length {length} on {queries.device} (this "
                f"call's), got {describe_value(vector)}; build the exclusions with Exclusions.check"
            )
    return exclusions


def check_positive_scores_request(return_positive_scores: object, exclusions: Exclusions) -> bool:
    """``return_positive_scores`` when it is a bool that the exclusions can serve (True needs labels).

    Raises:
        ValueError: not a bool, or True without labels.
    """
    wanted = check_bool("return_positive_scores", return_positive_scores)
    if wanted and exclusions.labels is None:
        raise ValueError(
            "return_positive_scores=True needs query_labels and bank_labels (positives are by label)"
        )
    return wanted


class TopkCall(NamedTuple):
    """A checked ``bank_topk`` call: what the backends take."""

    banks: list[tuple[Tensor, float]]
    k: int
    exclusions: Exclusions
    bank_chunk: int | None
    return_positive_scores: bool


def check_topk_call(
    queries: object,
    bank: object,
    k: object,
    *,
    query_labels: object,
    bank_labels: object,
    self_index: object,
    query_cams: object,
    bank_cams: object,
    cam_penalty: object,
    return_positive_scores: object,
    bank_chunk: object,
) -> TopkCall:
    """Every argument of ``bank_topk`` (see :func:`reidscale.kernels.reference_topk.bank_topk`), in order.

    Raises:
        ValueError: the first malformed argument, named, with what was expected.
    """
    banks = check_banks(queries, bank)
    check_k(k)
    chunk = check_optional_positive_int("bank_chunk", bank_chunk)
    exclusions = Exclusions.check(
        queries,
        banks[0][0].shape[0],
        query_labels=query_labels,
        bank_labels=bank_labels,
        self_index=self_index,
        query_cams=query_cams,
        bank_cams=bank_cams,
        cam_penalty=cam_penalty,
    )
    with_positives = check_positive_scores_request(return_positive_scores, exclusions)
    return TopkCall(banks, k, exclusions, chunk, with_positives)


# ------------------------------------------------------------------------------ losses and bank update


def accumulation_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (fp16/bf16 inputs are accumulated in fp32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_queries_and_bank(queries: object, bank: object) -> tuple[Tensor, Tensor]:
    """``(queries [B, D], bank [N, D])`` of the losses: floating (float64 too), one D, N ≥ 1."""
    queries = check_features("queries", queries, REFERENCE_DTYPES)
    bank = check_features("bank", bank, REFERENCE_DTYPES)
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(
            f"queries and bank must share the feature size D, got {queries.shape[1]} and {bank.shape[1]}"
        )
    if bank.shape[0] == 0:
        raise ValueError("bank must have at least one row, got N = 0")
    return queries, bank


def check_index_matrix(name: str, index: object, rows: int, bank_rows: int) -> Tensor:
    """A ``[rows, K]`` int64 matrix of bank indices in ``[-1, bank_rows)`` (``-1`` = padding)."""
    if not isinstance(index, Tensor) or index.dtype != torch.int64 or index.dim() != 2:
        raise ValueError(f"{name} must be a 2-D int64 tensor, got {describe_value(index)}")
    if index.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows (one per query), got {index.shape[0]}")
    if index.numel() and (int(index.min()) < -1 or int(index.max()) >= bank_rows):
        raise ValueError(f"{name} values must lie in [-1, {bank_rows}) (-1 = padding)")
    return index


def check_weights(name: str, weights: object, padding: Tensor) -> Tensor:
    """Finite, non-negative weights shaped like ``padding`` (bool [B, K]), exactly 0 on padding slots."""
    if not isinstance(weights, Tensor) or weights.dtype not in REFERENCE_DTYPES:
        raise ValueError(f"{name} must be a floating tensor, got {describe_value(weights)}")
    if weights.shape != padding.shape:
        raise ValueError(f"{name} must have shape {tuple(padding.shape)}, got {tuple(weights.shape)}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative")
    if bool((weights[padding] != 0).any()):
        raise ValueError(f"{name} must be 0 wherever the index is -1 (padding)")
    return weights


def check_temperature(temperature: object) -> float:
    """``temperature`` as a float when it is a positive finite number."""
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(f"temperature must be a positive float, got {temperature!r}")
    if not (0.0 < float(temperature) < float("inf")):
        raise ValueError(f"temperature must be positive and finite, got {temperature!r}")
    return float(temperature)


def check_loss_form(candidates: object, weights: object, positives: object, positive_weights: object) -> None:
    """Exactly one form of ``bank_contrastive_loss``: candidates (+ weights) or positives (+ weights)."""
    if (candidates is None) == (positives is None):
        raise ValueError("give exactly one of candidates (candidate-set form) or positives (whole-bank form)")
    if candidates is None and weights is not None:
        raise ValueError("weights goes with candidates; the whole-bank form takes positive_weights")
    if positives is None and positive_weights is not None:
        raise ValueError("positive_weights goes with positives; the candidate-set form takes weights")


def check_candidate_inputs(
    queries: object, bank: object, candidates: object, weights: object, temperature: object
) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """The candidate-set loss inputs, checked: ``(queries, bank, candidates, weights, temperature)``.

    Raises:
        ValueError: naming the argument and what was expected.
    """
    queries, bank = check_queries_and_bank(queries, bank)
    candidates = check_index_matrix("candidates", candidates, queries.shape[0], bank.shape[0])
    padding = candidates < 0
    weights = check_weights("weights", weights, padding)
    temperature = check_temperature(temperature)
    check_same_device(queries=queries, bank=bank, candidates=candidates, weights=weights)
    if candidates.shape[1] == 0 or bool(padding.all(dim=1).any()):
        raise ValueError("candidates must hold at least one valid (non -1) index in every row")
    return queries, bank, candidates, weights, temperature


def check_full_inputs(
    queries: object,
    bank: object,
    positives: object,
    positive_weights: object,
    temperature: object,
    bank_chunk: object = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, float, int]:
    """The whole-bank loss inputs, checked: ``(queries, bank, positives, weights, temperature, chunk)``.

    ``weights`` comes back in the accumulation dtype, uniform over the valid positives when
    ``positive_weights`` is None; ``chunk`` is the bank rows per streamed block (N when ``bank_chunk`` is
    None, at most N).

    Raises:
        ValueError: naming the argument and what was expected.
    """
    queries, bank = check_queries_and_bank(queries, bank)
    positives = check_index_matrix("positives", positives, queries.shape[0], bank.shape[0])
    padding = positives < 0
    if positives.shape[1] == 0 or bool(padding.all(dim=1).any()):
        raise ValueError("positives must hold at least one valid (non -1) index in every row")
    temperature = check_temperature(temperature)
    chunk = min(check_optional_positive_int("bank_chunk", bank_chunk) or bank.shape[0], bank.shape[0])
    dtype = accumulation_dtype(queries, bank)
    if positive_weights is None:
        valid = (~padding).to(dtype)
        weights = valid / valid.sum(dim=1, keepdim=True)
    else:
        weights = check_weights("positive_weights", positive_weights, padding).to(dtype)
    check_same_device(queries=queries, bank=bank, positives=positives, positive_weights=weights)
    return queries, bank, positives, weights, temperature, chunk


def check_update_inputs(
    bank: object, indices: object, features: object, momentum: object
) -> tuple[Tensor, Tensor, Tensor, float]:
    """The bank update inputs, checked: ``(bank [N, D], indices [B], features [B, D], momentum)``.

    Raises:
        ValueError: naming the argument and what was expected.
    """
    bank = check_features("bank", bank, REFERENCE_DTYPES)
    features = check_features("features", features, REFERENCE_DTYPES)
    if not isinstance(indices, Tensor) or indices.dtype != torch.int64 or indices.dim() != 1:
        raise ValueError(f"indices must be a 1-D int64 tensor, got {describe_value(indices)}")
    if indices.shape[0] != features.shape[0] or features.shape[1] != bank.shape[1]:
        raise ValueError(
            f"features must have shape [len(indices), D] = [{indices.shape[0]}, {bank.shape[1]}], "
            f"got {tuple(features.shape)}"
        )
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= bank.shape[0]):
        raise ValueError(f"indices values must lie in [0, {bank.shape[0]})")
    if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r}")
    check_same_device(bank=bank, indices=indices, features=features)
    return bank, indices, features, float(momentum)
