"""One dispatch point per memory-bank op: CUDA extension → Triton → torch reference.

Each public op checks its arguments with ``reidscale.kernels.checks`` (so every backend raises the same
``ValueError``; ``bank_topk`` builds one checked :class:`~reidscale.kernels.checks.Exclusions` that every
backend receives), asks :func:`choose_backend` which backend serves this call, and runs it.

Choice rules, per call:

- A backend serves a call when it is *usable here* (CUDA: ``reidscale._C`` loaded and a GPU; Triton:
  importable and a GPU, or ``TRITON_INTERPRET=1``), the call is inside what the backend declares it
  supports (``reidscale.kernels.support.BACKEND_SUPPORT``: the device types of its tensors, and per op the
  dtypes, largest k, widest D, most rows; e.g. the Triton ``bank_topk`` keeps k ≤ 128 on chip, float64
  is torch-only) and inside any call-specific limit the op names (a weighted bank list in separate
  tensors runs on torch only). Triton also takes CPU tensors under the interpreter, but only when asked
  for by name.
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
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from reidscale.kernels import reference_loss as ref_loss
from reidscale.kernels.checks import (
    Exclusions,
    check_bool,
    check_candidate_inputs,
    check_full_inputs,
    check_loss_form,
    check_topk_call,
    check_update_inputs,
)
from reidscale.kernels.chunked_topk import sort_by_score_then_index
from reidscale.kernels.reference_topk import BankSpec, torch_bank_topk
from reidscale.kernels.support import (
    BACKEND_SUPPORT,
    KERNEL_BACKENDS,
    OP_BACKENDS,
    triton_interpreting,
)

#: environment variable that asks for one backend
BACKEND_ENV = "REIDSCALE_KERNELS"


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
    if value not in KERNEL_BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of auto, {', '.join(KERNEL_BACKENDS)}; got {value!r}")
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
    raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(KERNEL_BACKENDS)}")


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


def _why_not(
    backend: str,
    op: str,
    device: torch.device,
    call: dict[str, Any],
    unsupported: dict[str, str],
    forced: bool,
) -> str | None:
    """None if ``backend`` can serve this call of ``op`` on ``device``, else the reason it cannot.

    The order of the reasons: the call's own (``unsupported``), the backend's declared limits, whether it
    is usable here, the device its tensors must be on.
    """
    if backend in unsupported:
        return unsupported[backend]
    support = BACKEND_SUPPORT[backend]
    reason = support.ops[op].why_not(**call)
    if reason is not None:
        return reason
    usable, reason = backend_status(backend)
    if not usable:
        return reason
    if support.devices is None or device.type in support.devices:
        return None
    if forced and device.type in support.interpreted_devices and triton_interpreting():
        return None
    places = " or ".join(kind.upper() for kind in support.devices)
    return f"tensors are on {device}, the {backend} backend runs on {places} tensors"


def choose_backend(
    op: str,
    device: torch.device,
    unsupported: dict[str, str] | None = None,
    *,
    dtypes: Iterable[torch.dtype] = (),
    k: int | None = None,
    dim: int | None = None,
    rows: int | None = None,
) -> str:
    """The backend that serves one call of ``op`` with tensors on ``device``.

    Args:
        op: a key of :data:`OP_BACKENDS`.
        device: where the call's tensors live.
        unsupported: backend → reason, for backends this particular call is outside of for a reason the
            support tables do not state.
        dtypes, k, dim, rows: the call's input dtypes, results per query, feature width and bank rows
            (those given), checked against each backend's declared limits (``BACKEND_SUPPORT``).

    Returns:
        ``"cuda"``, ``"triton"`` or ``"torch"``; falling back warns once per reason (see module doc).

    Raises:
        ValueError: ``REIDSCALE_KERNELS`` holds an unknown name, or no backend serves the call.
    """
    unsupported = unsupported or {}
    call = {"dtypes": tuple(dtypes), "k": k, "dim": dim, "rows": rows}
    order = OP_BACKENDS[op]
    forced = requested_backend()
    if forced is not None and forced not in order:
        _warn_once(f"{op}: {BACKEND_ENV}={forced} has no {op} kernel; using the dispatch order {order}")
        forced = None
    if forced is not None:
        reason = _why_not(forced, op, device, call, unsupported, forced=True)
        if reason is None:
            return forced
        chosen = _first_serving(op, order[order.index(forced) + 1 :], device, call, unsupported)[0]
        _warn_once(f"{op}: {BACKEND_ENV}={forced} cannot serve this call ({reason}); using {chosen}")
        return chosen
    chosen, skipped = _first_serving(op, order, device, call, unsupported)
    if device.type == "cuda" and skipped:
        _warn_once(f"{op}: using {chosen} on {device}; skipped " + "; ".join(skipped))
    return chosen


def _first_serving(
    op: str, order: tuple[str, ...], device: torch.device, call: dict[str, Any], unsupported: dict[str, str]
) -> tuple[str, list[str]]:
    """(the first backend of ``order`` that serves the call, ``"<backend>: <reason>"`` of those before it)."""
    skipped = []
    for backend in order:
        reason = _why_not(backend, op, device, call, unsupported, forced=False)
        if reason is None:
            return backend, skipped
        skipped.append(f"{backend}: {reason}")
    raise ValueError(f"no kernel backend serves this {op} call: " + "; ".join(skipped))


def dispatch_report() -> dict[str, Any]:
    """What ``reidscale info`` shows: the request, each backend's status, each op's choice for GPU/CPU."""
    try:
        forced = requested_backend()
    except ValueError as err:
        return {"requested": os.environ.get(BACKEND_ENV), "error": str(err)}
    statuses = {name: backend_status(name) for name in KERNEL_BACKENDS}
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
    bank: BankSpec,
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
    ``(pos_scores [B, P], pos_indices [B, P])`` with ``return_positive_scores=True``. The exclusion
    arguments become one checked :class:`~reidscale.kernels.checks.Exclusions` that the backend receives.

    Backends: CUDA (k ≤ 4096), Triton (k ≤ 128), torch. A weighted bank list whose banks are adjacent
    column blocks of one tensor (e.g. global + 8 stripe features stored side by side) runs on the fused
    kernels as ONE inner product over the weighted queries ``[w_1·q_1 | … | w_n·q_n]`` (fp32) and that
    tensor's view, copying no bank; banks in separate tensors run on the torch reference. The positive
    scores of the fused backends are computed by gathering each query's label-positives (O(B·P·D)).
    ``bank_chunk`` only tunes the torch backend.
    """
    call = check_topk_call(
        queries,
        bank,
        k,
        query_labels=query_labels,
        bank_labels=bank_labels,
        self_index=self_index,
        query_cams=query_cams,
        bank_cams=bank_cams,
        cam_penalty=cam_penalty,
        return_positive_scores=return_positive_scores,
        bank_chunk=bank_chunk,
    )
    fused = _fuse_adjacent_banks(queries, call.banks)
    unsupported = {}
    if fused is None:
        unsupported = dict.fromkeys(("cuda", "triton"), "weighted banks in separate tensors")
    dtypes = (queries.dtype, *(rows.dtype for rows, _ in call.banks))
    rows = call.banks[0][0].shape[0]
    backend = choose_backend("bank_topk", queries.device, unsupported, dtypes=dtypes, k=k, rows=rows)
    if backend == "torch":
        return torch_bank_topk(
            queries,
            call.banks,
            k,
            call.exclusions,
            bank_chunk=call.bank_chunk,
            return_positive_scores=call.return_positive_scores,
        )
    fused_queries, fused_bank = fused
    if backend == "cuda":
        from reidscale.kernels.cuda import cuda_bank_topk as run
    else:
        from reidscale.kernels.triton import triton_bank_topk as run
    best = run(fused_queries, fused_bank, k, call.exclusions)
    if not call.return_positive_scores:
        return best
    return (*best, *_positive_scores(fused_queries, fused_bank, call.exclusions))


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


def _positive_scores(queries: Tensor, bank: Tensor, exclusions: Exclusions) -> tuple[Tensor, Tensor]:
    """``(pos_scores [B, P], pos_indices [B, P])``: every label-positive but self, as the reference returns.

    ``exclusions`` carries labels (checked by ``checks.check_positive_scores_request``). The bank labels
    are sorted once; each query's positives are the run of its label (self removed), gathered and scored
    directly (fp32, camera penalty included), then ordered like the top-k.
    """
    batch, device = queries.shape[0], queries.device
    query_labels, bank_labels = exclusions.labels
    sorted_labels, order = torch.sort(bank_labels, stable=True)
    first = torch.searchsorted(sorted_labels, query_labels, side="left")
    count = torch.searchsorted(sorted_labels, query_labels, side="right") - first  # [B]
    width = int(count.max()) if batch else 0
    slots = torch.arange(width, device=device)
    present = slots[None, :] < count[:, None]  # [B, width]
    ids = torch.where(
        present, order[(first[:, None] + slots[None, :]).clamp(max=max(bank.shape[0] - 1, 0))], -1
    )
    if exclusions.self_index is not None:
        ids = torch.where(ids == exclusions.self_index[:, None], -1, ids)
    rows = bank[ids.clamp(min=0)].to(torch.float32)  # [B, width, D]
    scores = torch.einsum("bd,bpd->bp", queries.to(torch.float32), rows)
    if exclusions.cams is not None:
        query_cams, bank_cams = exclusions.cams
        same_cam = query_cams[:, None] == bank_cams[ids.clamp(min=0)]
        scores = scores - exclusions.penalty * same_cam.to(torch.float32)
    scores, ids = sort_by_score_then_index(scores, ids)
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
    check_loss_form(candidates, weights, positives, positive_weights)
    if candidates is not None:
        checked = check_candidate_inputs(queries, bank, candidates, weights, temperature)
        queries, bank, candidates, weights, temperature = checked
    else:
        checked = check_full_inputs(queries, bank, positives, positive_weights, temperature, bank_chunk)
        queries, bank, positives, weights, temperature, chunk = checked
    dtypes = (queries.dtype, bank.dtype)
    backend = choose_backend("bank_contrastive_loss", queries.device, dtypes=dtypes)
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
    bank, indices, features, momentum = check_update_inputs(bank, indices, features, momentum)
    check_bool("normalize", normalize)
    dtypes = (bank.dtype, features.dtype)
    backend = choose_backend("bank_update", bank.device, dtypes=dtypes, dim=bank.shape[1])
    if backend == "torch" or indices.numel() == 0:
        ref_loss.bank_update(bank, indices, features, momentum, normalize)
        return
    from reidscale.kernels.triton import triton_bank_update

    with torch.no_grad():
        triton_bank_update(bank, indices, features.detach(), momentum, normalize)
