"""What each memory-bank kernel backend supports, declared once; the table the dispatch chooses from.

Each backend has one :class:`BackendSupport`: the device types its tensors may live on and, for every op it
implements, an :class:`OpLimits` (input dtypes, largest k, widest row D, most bank rows).
:func:`reidscale.kernels.dispatch.choose_backend` reads these tables to decide whether a backend serves a
call, and the kernels read their limits from here too, so every limit has one definition.

Two names describe what they hold:

- :data:`KERNEL_BACKENDS`: the kernel implementations, fastest first (``cuda``, ``triton``, ``torch``);
- :data:`OP_BACKENDS`: per op, the backends that implement it, in that order (the dispatch order).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

#: input dtypes of the fused kernels, and of ``bank_topk`` on every backend (scores are float32)
FUSED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
#: input dtypes the torch reference also takes for the losses and the bank update
REFERENCE_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: largest k of ``bank_topk`` on any backend (the CUDA kernel keeps k candidates per query on chip)
BANK_TOPK_MAX_K = 4096
#: largest k the Triton ``bank_topk`` kernel keeps on chip (a larger k runs the torch reference)
TRITON_TOPK_MAX_K = 128
#: widest row the Triton ``bank_update`` kernel holds on chip
TRITON_UPDATE_MAX_D = 8192
#: most bank rows of the fused ``bank_topk`` kernels (a row index is packed into 32 bits, one value reserved)
FUSED_TOPK_MAX_ROWS = 2**32 - 2
#: the ops, in the order ``reidscale info`` lists them
OPS: tuple[str, ...] = ("bank_topk", "bank_contrastive_loss", "bank_update")


def triton_interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors through the interpreter (the
    condition of :attr:`BackendSupport.interpreted_devices`)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``"float32"``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class OpLimits:
    """What one backend's implementation of one op takes; None means no limit of that kind."""

    #: input dtypes it takes (every floating input of the call must be one of them)
    dtypes: tuple[torch.dtype, ...]
    #: largest k (results per query)
    max_k: int | None = None
    #: widest feature row D
    max_dim: int | None = None
    #: most bank rows N
    max_rows: int | None = None

    def why_not(
        self,
        dtypes: Iterable[torch.dtype] = (),
        k: int | None = None,
        dim: int | None = None,
        rows: int | None = None,
    ) -> str | None:
        """None when a call with these properties is inside the limits, else the first reason it is not."""
        for dtype in dtypes:
            if dtype not in self.dtypes:
                return f"{dtype_name(dtype)} inputs (takes {', '.join(map(dtype_name, self.dtypes))})"
        if k is not None and self.max_k is not None and k > self.max_k:
            return f"k = {k} > {self.max_k}"
        if dim is not None and self.max_dim is not None and dim > self.max_dim:
            return f"D = {dim} > {self.max_dim}"
        if rows is not None and self.max_rows is not None and rows > self.max_rows:
            return f"N = {rows} > {self.max_rows}"
        return None


@dataclass(frozen=True)
class BackendSupport:
    """One backend's declared support: where its tensors may live and the limits of each op it implements."""

    #: device types (``torch.device.type``) of the tensors it runs on; None: any device torch runs on
    devices: tuple[str, ...] | None
    #: op name → its limits; an op missing here has no kernel in this backend
    ops: Mapping[str, OpLimits]
    #: device types it also runs on under ``TRITON_INTERPRET=1``, when asked for by name
    interpreted_devices: tuple[str, ...] = field(default=())


#: every kernel backend's support table, fastest backend first
BACKEND_SUPPORT: dict[str, BackendSupport] = {
    "cuda": BackendSupport(
        devices=("cuda",),
        ops={"bank_topk": OpLimits(FUSED_DTYPES, max_k=BANK_TOPK_MAX_K, max_rows=FUSED_TOPK_MAX_ROWS)},
    ),
    "triton": BackendSupport(
        devices=("cuda",),
        interpreted_devices=("cpu",),
        ops={
            "bank_topk": OpLimits(FUSED_DTYPES, max_k=TRITON_TOPK_MAX_K, max_rows=FUSED_TOPK_MAX_ROWS),
            "bank_contrastive_loss": OpLimits(FUSED_DTYPES),
            "bank_update": OpLimits(FUSED_DTYPES, max_dim=TRITON_UPDATE_MAX_D),
        },
    ),
    "torch": BackendSupport(
        devices=None,
        ops={
            "bank_topk": OpLimits(FUSED_DTYPES, max_k=BANK_TOPK_MAX_K),
            "bank_contrastive_loss": OpLimits(REFERENCE_DTYPES),
            "bank_update": OpLimits(REFERENCE_DTYPES),
        },
    ),
}
#: every kernel backend, fastest first
KERNEL_BACKENDS: tuple[str, ...] = tuple(BACKEND_SUPPORT)
#: op → the backends that implement it, in dispatch order
OP_BACKENDS: dict[str, tuple[str, ...]] = {
    op: tuple(name for name in KERNEL_BACKENDS if op in BACKEND_SUPPORT[name].ops) for op in OPS
}
