"""Whether and how the Triton kernels run here: the driver / interpreter probe and the dot-product mode.

Shared by every Triton kernel module, so the run checks are stated once (the ``TRITON_INTERPRET`` rule
itself is ``reidscale.kernels.support.triton_interpreting``).
"""

from __future__ import annotations

import torch

from reidscale.kernels.support import triton_interpreting


def triton_available() -> tuple[bool, str]:
    """Whether Triton kernels can run here: ``(True, reason)`` with a CUDA GPU or ``TRITON_INTERPRET=1``."""
    if triton_interpreting():
        return True, "TRITON_INTERPRET=1: Triton interpreter on CPU tensors"
    if torch.cuda.is_available():
        return True, f"CUDA device {torch.cuda.get_device_name(0)}"
    return False, "no CUDA GPU and TRITON_INTERPRET is not 1 (Triton has no active driver)"


def require_runnable(kernel: str, name: str, tensor: torch.Tensor) -> None:
    """Raise unless Triton can run ``kernel`` on ``tensor`` (the argument called ``name``) here.

    Raises:
        RuntimeError: Triton cannot run here (no GPU and no ``TRITON_INTERPRET=1``).
        ValueError: ``tensor`` is not a CUDA tensor and the interpreter is off.
    """
    ok, reason = triton_available()
    if not ok:
        raise RuntimeError(f"{kernel} cannot run: {reason}")
    if tensor.device.type != "cuda" and not triton_interpreting():
        raise ValueError(
            f"{name} must be on a CUDA device for {kernel} (or set TRITON_INTERPRET=1), got {tensor.device}"
        )


def native_dot(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Whether ``tl.dot`` takes these operands as they are (same fp16/bf16 dtype: exact products, fp32
    accumulation); otherwise they go through the fp32 ``ieee`` path.

    The interpreter computes a bf16 ``tl.dot`` on the raw bits (numpy has no bfloat16), so there bf16 goes
    through the fp32 path, which gives the same exact products.
    """
    native = (torch.float16,) if triton_interpreting() else (torch.float16, torch.bfloat16)
    return first.dtype == second.dtype and first.dtype in native
