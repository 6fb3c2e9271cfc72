"""One dispatch point per memory-bank op: CUDA extension → Triton → torch reference.

Each public op validates its arguments with the reference's checks (so every backend raises the same
``ValueError``), asks :func:`choose_backend` which backend serves this call, and runs it.

Choice rules, per call:

- A backend serves a call when it is *usable here* (CUDA: ``reidscale._C`` loaded and a GPU; Triton:
  importable and a GPU, or ``TRITON_INTERPRET=1``), the tensors are on a device it runs on (CUDA tensors;
  Triton also takes CPU tensors under the interpreter, but only when asked for by name) and the call is
  inside what it supports (e.g. the Triton ``bank_topk`` keeps k ≤ 128 on chip, float64 is torch-only).
- ``REIDSCALE_KERNELS=torch|triton|cuda`` asks for one backend; unset or ``auto`` takes the first that
  serves the call in the order cuda → triton → torch.
- When the requested backend, or on a GPU a faster backend in the order, cannot serve a call, the op
  falls back to the next one and says why in a :class:`KernelFallbackWarning`, once per distinct reason.
  CPU tensors going to torch is the normal case and warns about nothing.

:func:`dispatch_report` is what ``reidscale info`` prints.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from typing import Any

import torch
from torch import Tensor

from reidscale.kernels import reference_loss as ref_loss
from reidscale.kernels import reference_topk as ref_topk

#: environment variable that asks for one backend
BACKEND_ENV = "REIDSCALE_KERNELS"
#: every backend, fastest first
BACKENDS: tuple[str, ...] = ("cuda", "triton", "torch")
#: the backends that implement each op, in dispatch order
OP_BACKENDS: dict[str, tuple[str, ...]] = {
    "bank_topk": ("cuda", "triton", "torch"),
    "bank_contrastive_loss": ("triton", "torch"),
    "bank_update": ("triton", "torch"),
}
#: largest k the Triton bank_topk kernel serves (kept here so choosing needs no triton import)
TRITON_TOPK_MAX_K = 128
#: widest row the Triton bank_update kernel holds on chip
TRITON_UPDATE_MAX_D = 8192
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class KernelFallbackWarning(UserWarning):
    """A faster or requested kernel backend could not serve a call; a slower one did."""


# ------------------------------------------------------------------------------------------- choosing


def requested_backend() -> str | None:
    """The backend named by ``REIDSCALE_KERNELS`` (None for unset/empty/``auto``).

    Raises:
        ValueError: the variable holds anything else.
    """
    value = os.environ.get(BACKEND_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of auto, {', '.join(BACKENDS)}; got {value!r}")
    return value


@functools.cache
def _cuda_status() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        built = importlib.util.find_spec("reidscale._C") is not None
        state = "reidscale._C built" if built else "reidscale._C not built (see setup.py)"
        return False, f"{state}; no CUDA GPU visible"
    from reidscale.kernels.cuda import cuda_available

    return cuda_available()


@functools.cache
def _triton_status() -> tuple[bool, str]:
    try:
        from reidscale.kernels.triton import triton_available
    except ImportError as err:
        return False, f"triton not importable ({err})"
    return triton_available()


def backend_status(backend: str) -> tuple[bool, str]:
    """``(usable here, reason)`` for one backend; cached (call :func:`reset_backend_cache` to re-probe)."""
    if backend == "cuda":
        return _cuda_status()
    if backend == "triton":
        return _triton_status()
    if backend == "torch":
        return True, "torch reference, always available"
    raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def reset_backend_cache() -> None:
    """Forget the cached backend probes and the warnings already given (tests, or after an env change)."""
    _cuda_status.cache_clear()
    _triton_status.cache_clear()
    _warned.clear()


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, KernelFallbackWarning, stacklevel=4)


def _why_not(backend: str, device: torch.device, unsupported: dict[str, str], forced: bool) -> str | None:
    """None if ``backend`` can serve a call on ``device``, else the reason it cannot."""
    if backend in unsupported:
        return unsupported[backend]
    if backend == "torch":
        return None
    usable, reason = backend_status(backend)
    if not usable:
        return reason
    if device.type == "cuda":
        return None
    interpreted = backend == "triton" and os.environ.get("TRITON_INTERPRET", "0") == "1"
    if interpreted and forced:
        return None
    return f"tensors are on {device}, the {backend} backend runs on CUDA tensors"


def choose_backend(op: str, device: torch.device, unsupported: dict[str, str] | None = None) -> str:
    """The backend that serves one call of ``op`` with tensors on ``device``.

    Args:
        op: a key of :data:`OP_BACKENDS`.
        device: where the call's tensors live.
        unsupported: backend → reason, for backends this particular call is outside of.

    Returns:
        ``"cuda"``, ``"triton"`` or ``"torch"``; falling back warns once per reason (see module doc).
    """
    unsupported = unsupported or {}
    order = OP_BACKENDS[op]
    forced = requested_backend()
    if forced is not None and forced not in order:
        _warn_once(f"{op}: {BACKEND_ENV}={forced} has no {op} kernel; using the dispatch order {order}")
        forced = None
    if forced is not None:
        reason = _why_not(forced, device, unsupported, forced=True)
        if reason is None:
            return forced
        order = order[order.index(forced) + 1 :]
        chosen = next(b for b in order if _why_not(b, device, unsupported, forced=False) is None)
        _warn_once(f"{op}: {BACKEND_ENV}={forced} cannot serve this call ({reason}); using {chosen}")
        return chosen
    skipped = []
    for backend in order:
        reason = _why_not(backend, device, unsupported, forced=False)
        if reason is None:
            if device.type == "cuda" and skipped:
                _warn_once(f"{op}: using {backend} on {device}; skipped " + "; ".join(skipped))
            return backend
        skipped.append(f"{backend}: {reason}")
    raise AssertionError("the torch backend serves every call")  # pragma: no cover


def dispatch_report() -> dict[str, Any]:
    """What ``reidscale info`` shows: the request, each backend's status, each op's choice for GPU/CPU."""
    try:
        forced = requested_backend()
    except ValueError as err:
        return {"requested": os.environ.get(BACKEND_ENV), "error": str(err)}
    statuses = {name: backend_status(name) for name in BACKENDS}
    ops = {}
    for op, order in OP_BACKENDS.items():
        ops[op] = {
            "order": list(order),
            "cuda_tensors": _report_choice(op, torch.device("cuda")) if torch.cuda.is_available() else None,
            "cpu_tensors": _report_choice(op, torch.device("cpu")),
        }
    return {
        "requested": forced or "auto",
        "backends": {name: {"usable": ok, "detail": why} for name, (ok, why) in statuses.items()},
        "ops": ops,
    }


def _report_choice(op: str, device: torch.device) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KernelFallbackWarning)
        return choose_backend(op, device)


# --------------------------------------------------------------------------------------------- ops


def bank_topk(
    queries: Tensor,
    bank: ref_topk.BankSpec,
    k: int,
    *,
    query_labels: Tensor | None = None,
    bank_labels: Tensor | None = None,
    self_index: Tensor | None = None,
    query_cams: Tensor | None = None,
    bank_cams: Tensor | None = None,
    cam_penalty: float = 0.0,
    return_positive_scores: bool = False,
    bank_chunk: int | None = None,
) -> tuple[Tensor, ...]:
    """Top-k bank rows per query by (weighted) inner product; the B×N score matrix is never formed.

    The semantics, arguments and results are those of
    :func:`reidscale.kernels.reference_topk.bank_topk` (the definition): ``(scores [B, k] float32,
    indices [B, k] int64)`` sorted by score descending then index ascending, padded with (−inf, −1), plus
    ``(pos_scores [B, P], pos_indices [B, P])`` with ``return_positive_scores=True``.

    Backends: CUDA (k ≤ 4096), Triton (k ≤ 128), torch. A weighted bank list whose banks are adjacent
    column blocks of one tensor (e.g. global + 8 stripe features stored side by side) runs on the fused
    kernels as ONE inner product over the weighted queries ``[w_1·q_1 | … | w_n·q_n]`` (fp32) and that
    tensor's view, copying no bank; banks in separate tensors run on the torch reference. The positive
    scores of the fused backends are computed by gathering each query's label-positives (O(B·P·D)).
    ``bank_chunk`` only tunes the torch backend.
    """
    banks = ref_topk._check_banks(queries, bank)
    ref_topk._check_k(k)
    options = {
        "query_labels": query_labels,
        "bank_labels": bank_labels,
        "self_index": self_index,
        "query_cams": query_cams,
        "bank_cams": bank_cams,
        "cam_penalty": cam_penalty,
    }
    fused = _fuse_adjacent_banks(queries, banks)
    unsupported = {}
    if fused is None:
        unsupported = dict.fromkeys(("cuda", "triton"), "weighted banks in separate tensors")
    if k > TRITON_TOPK_MAX_K:
        unsupported.setdefault("triton", f"k = {k} > {TRITON_TOPK_MAX_K}")
    backend = choose_backend("bank_topk", queries.device, unsupported)
    if backend == "torch":
        return ref_topk.bank_topk(
            queries, bank, k, return_positive_scores=return_positive_scores, bank_chunk=bank_chunk, **options
        )
    if not isinstance(return_positive_scores, bool):
        raise ValueError(
            f"return_positive_scores must be a bool, got {type(return_positive_scores).__name__}"
        )
    fused_queries, fused_bank = fused
    if backend == "cuda":
        from reidscale.kernels.cuda import cuda_bank_topk as run
    else:
        from reidscale.kernels.triton import triton_bank_topk as run
    best = run(fused_queries, fused_bank, k, **options)
    if not return_positive_scores:
        return best
    return (*best, *_positive_scores(fused_queries, fused_bank, options))


def _fuse_adjacent_banks(queries: Tensor, banks: list[tuple[Tensor, float]]) -> tuple[Tensor, Tensor] | None:
    """``(queries', bank')`` with ``queries' · bank'ᵀ`` = the weighted multi-bank score, or None.

    A single bank with weight 1 comes back as it is. Several banks qualify when they are, in order,
    adjacent column blocks of one tensor (same storage, dtype and strides, each starting where the previous
    ends): ``bank'`` is then a view over all their columns and ``queries'`` the fp32 queries with each
    column block scaled by its bank's weight.
    """
    first = banks[0][0]
    if len(banks) == 1 and banks[0][1] == 1.0:
        return queries, first
    offset, widths = first.storage_offset(), []
    for rows, _ in banks:
        same_layout = rows.dtype == first.dtype and rows.stride() == first.stride()
        same_storage = rows.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        if not (same_layout and same_storage and rows.storage_offset() == offset):
            return None
        offset += rows.shape[1] * rows.stride(1)
        widths.append(rows.shape[1])
    fused_bank = first.as_strided((first.shape[0], sum(widths)), first.stride(), first.storage_offset())
    scale = torch.cat(
        [torch.full((width,), weight) for width, (_, weight) in zip(widths, banks, strict=True)]
    )
    return queries.to(torch.float32) * scale.to(queries.device), fused_bank


def _positive_scores(queries: Tensor, bank: Tensor, options: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """``(pos_scores [B, P], pos_indices [B, P])``: every label-positive but self, as the reference returns.

    The bank labels are sorted once; each query's positives are the run of its label (self removed),
    gathered and scored directly (fp32, camera penalty included), then ordered like the top-k.
    """
    batch, device = queries.shape[0], queries.device
    labels = ref_topk._check_pair(
        "query_labels", options["query_labels"], "bank_labels", options["bank_labels"], queries, bank.shape[0]
    )
    if labels is None:
        raise ValueError(
            "return_positive_scores=True needs query_labels and bank_labels (positives are by label)"
        )
    selves = ref_topk._check_self_index(options["self_index"], queries, bank.shape[0])
    sorted_labels, order = torch.sort(labels[1], stable=True)
    first = torch.searchsorted(sorted_labels, labels[0], side="left")
    count = torch.searchsorted(sorted_labels, labels[0], side="right") - first  # [B]
    width = int(count.max()) if batch else 0
    slots = torch.arange(width, device=device)
    present = slots[None, :] < count[:, None]  # [B, width]
    ids = torch.where(
        present, order[(first[:, None] + slots[None, :]).clamp(max=max(bank.shape[0] - 1, 0))], -1
    )
    if selves is not None:
        ids = torch.where(ids == selves[:, None], -1, ids)
    rows = bank[ids.clamp(min=0)].to(torch.float32)  # [B, width, D]
    scores = torch.einsum("bd,bpd->bp", queries.to(torch.float32), rows)
    cams = ref_topk._check_pair(
        "query_cams", options["query_cams"], "bank_cams", options["bank_cams"], queries, bank.shape[0]
    )
    penalty = ref_topk._check_penalty(options["cam_penalty"], cams)
    if cams is not None and penalty != 0.0:
        scores = scores - penalty * (cams[0][:, None] == cams[1][ids.clamp(min=0)]).to(torch.float32)
    scores, ids = ref_topk.sort_by_score_then_index(scores, ids)
    n_pos = int((ids >= 0).sum(dim=1).max()) if batch else 0
    return scores[:, :n_pos].contiguous(), ids[:, :n_pos].contiguous()


def bank_contrastive_loss(
    queries: Tensor,
    bank: Tensor,
    temperature: float,
    *,
    candidates: Tensor | None = None,
    weights: Tensor | None = None,
    positives: Tensor | None = None,
    positive_weights: Tensor | None = None,
    bank_chunk: int | None = None,
) -> Tensor:
    """Multi-positive InfoNCE over memory-bank rows, in one of two forms; gradient to ``queries`` only.

    - Candidate set (``candidates`` + ``weights``): softmax over each query's candidate rows (self,
      positives, selected negatives) with per-candidate target weights, as
      :func:`reidscale.kernels.reference_loss.bank_contrastive_loss_candidates` defines it.
    - Whole bank (``positives`` [+ ``positive_weights``]): softmax over all N rows, never forming B×N, as
      :func:`reidscale.kernels.reference_loss.bank_contrastive_loss_full` defines it (``bank_chunk`` tunes
      the torch backend only).

    Args:
        queries: ``[B, D]`` float16/bfloat16/float32/float64.
        bank: ``[N, D]`` floating (a buffer: no gradient).
        temperature: positive float; logits are ``q · m / temperature``.
        candidates, weights: ``[B, C]`` int64 (−1 = padding) and ``[B, C]`` float weights (0 on padding).
        positives, positive_weights: ``[B, P]`` int64 (−1 = padding) and optional ``[B, P]`` weights.
        bank_chunk: torch backend's rows per streamed block.

    Returns:
        Scalar ``mean_b L_b`` (float32, or float64 for float64 inputs on the torch backend). Every backend
        computes ``dL/dq`` in its forward pass; the backward only scales it.
    """
    if (candidates is None) == (positives is None):
        raise ValueError("give exactly one of candidates (candidate-set form) or positives (whole-bank form)")
    if candidates is None and weights is not None:
        raise ValueError("weights goes with candidates; the whole-bank form takes positive_weights")
    if positives is None and positive_weights is not None:
        raise ValueError("positive_weights goes with positives; the candidate-set form takes weights")
    if candidates is not None:
        checked = ref_loss.check_candidate_inputs(queries, bank, candidates, weights, temperature)
        queries, bank, candidates, weights, temperature = checked
    else:
        checked = ref_loss.check_full_inputs(
            queries, bank, positives, positive_weights, temperature, bank_chunk
        )
        queries, bank, positives, weights, temperature, chunk = checked
    unsupported = {}
    if queries.dtype not in _TRITON_DTYPES or bank.dtype not in _TRITON_DTYPES:
        unsupported["triton"] = "float64 inputs"
    backend = choose_backend("bank_contrastive_loss", queries.device, unsupported)
    need_grad = ref_loss.needs_query_grad(queries)
    if backend == "torch":
        if candidates is not None:
            return ref_loss.bank_contrastive_loss_candidates(queries, bank, candidates, weights, temperature)
        terms = ref_loss.full_bank_terms(queries, bank, positives, weights, temperature, chunk, need_grad)
        return ref_loss.loss_from_terms(queries, *terms)
    from reidscale.kernels.triton import triton_loss_candidate_terms, triton_loss_full_terms

    weights = weights.to(torch.float32)
    if candidates is not None:
        terms = triton_loss_candidate_terms(
            queries, bank.detach(), candidates, weights, temperature, need_grad
        )
    else:
        terms = triton_loss_full_terms(queries, bank.detach(), positives, weights, temperature, need_grad)
    return ref_loss.loss_from_terms(queries, *terms)


def bank_update(
    bank: Tensor, indices: Tensor, features: Tensor, momentum: float, normalize: bool = True
) -> None:
    """In place: ``bank[i] ← normalise(momentum · bank[i] + (1 − momentum) · f)`` per (index, feature) pair.

    Semantics of :func:`reidscale.kernels.reference_loss.bank_update`: repeated indices are applied in
    batch order with fp32 intermediates, the bank dtype written once per row.

    Args:
        bank: ``[N, D]`` floating, updated in place.
        indices: ``[B]`` int64 in ``[0, N)``.
        features: ``[B, D]`` floating.
        momentum: weight of the old row, in ``[0, 1]``.
        normalize: L2-normalise each updated row.
    """
    bank, indices, features, momentum = ref_loss.check_update_inputs(bank, indices, features, momentum)
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize must be a bool, got {type(normalize).__name__}")
    unsupported = {}
    if bank.dtype not in _TRITON_DTYPES or features.dtype not in _TRITON_DTYPES:
        unsupported["triton"] = "float64 inputs"
    elif bank.shape[1] > TRITON_UPDATE_MAX_D:
        unsupported["triton"] = f"D = {bank.shape[1]} > {TRITON_UPDATE_MAX_D} (a row is held on chip)"
    backend = choose_backend("bank_update", bank.device, unsupported)
    if backend == "torch" or indices.numel() == 0:
        ref_loss.bank_update(bank, indices, features, momentum, normalize)
        return
    from reidscale.kernels.triton import triton_bank_update

    with torch.no_grad():
        triton_bank_update(bank, indices, features.detach(), momentum, normalize)
