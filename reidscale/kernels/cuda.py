"""CUDA ``bank_topk`` (``csrc/bank_topk/``): loading the compiled ops and the checked Python entry point.

The C++/CUDA sources under ``csrc/`` are compiled into ``reidscale._C`` by ``setup.py`` when a CUDA toolkit
is present at install time. When that module is missing, :func:`cuda_extension` JIT-compiles the same sources
with ``torch.utils.cpp_extension.load`` (ninja) into a cache folder on first use, provided a CUDA device and
nvcc are present (``REIDSCALE_CUDA_JIT=0`` disables this; ``REIDSCALE_CUDA_CACHE`` moves the cache, default
``~/.cache/reidscale/cuda``). Either way, loading the library registers ``torch.ops.reidscale.bank_topk``.

Semantics are those of :func:`reidscale.kernels.reference_topk.bank_topk` for a single bank (the
definition), with the exclusions as a checked :class:`~reidscale.kernels.checks.Exclusions`; the kernel
design (tiled FMA GEMM, packed (score, index) keys, per-query staging buffers merged into per-split sorted
top-k lists, a final top-k over the splits) is described in ``csrc/bank_topk/bank_topk_kernel.cu``. k goes
up to 4096; the B×N score matrix is never written; extra device memory is 16·B·k·S bytes for S bank
splits (S chosen from the device size, at most 256 MiB of lists, unless given).
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from reidscale.kernels.checks import (
    Exclusions,
    check_exclusions,
    check_k,
    check_optional_positive_int,
    check_single_bank,
)
from reidscale.kernels.support import FUSED_TOPK_MAX_ROWS
from reidscale.utils.cuda_toolkit import csrc_sources, cuda_toolkit_root

#: the repository's csrc/ folder (present in a source checkout / editable install, not in a wheel)
CSRC = Path(__file__).resolve().parents[2] / "csrc"
#: name of the JIT-built module (the installed one is reidscale._C)
JIT_NAME = "reidscale_cuda_jit"


def cuda_extension() -> ModuleType | None:
    """The loaded CUDA ops module (``reidscale._C``, else a JIT build), or None when neither can be had."""
    return _load_extension()[0]


def cuda_available() -> tuple[bool, str]:
    """``(True, reason)`` with a CUDA device and the ops loaded, else ``(False, what is missing)``."""
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    module, reason = _load_extension()
    if module is None:
        return False, reason
    return True, f"{reason}, on {torch.cuda.get_device_name(0)}"


@functools.cache
def _load_extension() -> tuple[ModuleType | None, str]:
    """(module, how it was loaded) or (None, why not); the outcome is cached for the process."""
    try:
        return importlib.import_module("reidscale._C"), "reidscale._C (built at install)"
    except ImportError as exc:
        not_built = f"reidscale._C cannot be imported ({exc})"
    if os.environ.get("REIDSCALE_CUDA_JIT", "1") == "0":
        return None, f"{not_built} and REIDSCALE_CUDA_JIT=0 disables the JIT build"
    if not torch.cuda.is_available():
        return None, f"{not_built} and no CUDA device to JIT-build for"
    sources = jit_sources()
    if not sources:
        return None, f"{not_built} and there are no sources under {CSRC} to JIT-build"
    root = cuda_toolkit_root()
    if root is None:
        return None, f"{not_built} and no CUDA toolkit (CUDA_HOME unset, no nvcc) to JIT-build with"
    try:
        return _jit_build(sources, root), f"{JIT_NAME} (JIT-built from {CSRC})"
    except Exception as exc:  # a failed build is reported, and the callers fall back to other backends
        warnings.warn(f"JIT build of the reidscale CUDA ops failed: {exc}", RuntimeWarning, stacklevel=2)
        return None, f"{not_built} and the JIT build failed: {exc}"


def jit_sources() -> list[str]:
    """Every ``csrc/<op>/*.cpp`` and ``*.cu`` (the same set setup.py compiles), as absolute paths."""
    return [str(p) for p in csrc_sources(CSRC)]


def _jit_build(sources: list[str], root: str) -> ModuleType:
    """Compile ``sources`` with ninja into the cache folder (reused while unchanged) and load them."""
    # torch reads CUDA_HOME once, when cpp_extension is first imported, and may have guessed wrong already
    os.environ.setdefault("CUDA_HOME", root)
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
    cache = Path(os.environ.get("REIDSCALE_CUDA_CACHE", Path.home() / ".cache" / "reidscale" / "cuda"))
    build_dir = cache / f"torch-{torch.__version__}".replace("+", "_")
    build_dir.mkdir(parents=True, exist_ok=True)
    flags = ["-O3"]  # torch adds its own -std (c++20 for torch 2.14)
    return cpp_extension.load(
        name=JIT_NAME,
        sources=sources,
        extra_cflags=flags,
        extra_cuda_cflags=flags,
        build_directory=str(build_dir),
        is_python_module=True,
    )


def cuda_bank_topk(
    queries: Tensor,
    bank: Tensor,
    k: int,
    exclusions: Exclusions | None = None,
    *,
    splits: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-k bank rows per query with the CUDA kernel (single bank; see the module docstring).

    Args:
        queries: [B, D] float32/float16/bfloat16 on a CUDA device (any strides; copied to fp32 [B, D]).
        bank: [N, D] float32/float16/bfloat16 on the same device, any strides (never copied);
            N ≤ ``FUSED_TOPK_MAX_ROWS``.
        k: 1 ≤ k ≤ 4096; k may exceed N (the tail is padding).
        exclusions: labels, self index and camera penalty, built by ``Exclusions.check`` for this call
            (None: nothing excluded); its int64 vectors are read in place.
        splits: bank splits S ≥ 1 processed by separate blocks (None: chosen from the device size, B, N
            and k); the result does not depend on it.

    Returns:
        (scores [B, k] float32, indices [B, k] int64): sorted by score descending then index ascending,
        padded with (−inf, −1); the reference's result up to fp32 summation order.

    Raises:
        ValueError: malformed arguments (as the reference), exclusions built for another call, tensors not
            on a CUDA device, N > FUSED_TOPK_MAX_ROWS, or a non-finite score.
        RuntimeError: the CUDA ops cannot run here (no device, or the extension is neither built nor
            JIT-buildable; the message says which).
    """
    bank = check_single_bank("CUDA", queries, bank)
    check_k(k)
    exclusions = check_exclusions(exclusions, queries, bank.shape[0])
    check_optional_positive_int("splits", splits)
    _check_runnable(queries, bank.shape[0])
    labels, cams = exclusions.labels, exclusions.cams  # cams is None when the penalty is 0: no camera reads
    scores, indices, nonfinite = torch.ops.reidscale.bank_topk(
        queries.detach(),
        bank.detach(),
        k,
        labels[0] if labels else None,
        labels[1] if labels else None,
        exclusions.self_index,
        cams[0] if cams else None,
        cams[1] if cams else None,
        exclusions.penalty,
        splits or 0,
    )
    if int(nonfinite.item()) != 0:
        raise ValueError(
            "non-finite score: queries/bank must be finite and their products must fit in float32"
        )
    return scores, indices


def _check_runnable(queries: Tensor, n_rows: int) -> None:
    """Raise unless the op can run on ``queries``' device: a CUDA tensor, the ops loaded, N in range."""
    if queries.device.type != "cuda":
        raise ValueError(f"queries must be on a CUDA device for the CUDA kernel, got {queries.device}")
    ok, reason = cuda_available()
    if not ok:
        raise RuntimeError(f"cuda_bank_topk cannot run: {reason}")
    if n_rows > FUSED_TOPK_MAX_ROWS:
        raise ValueError(
            f"bank must have at most {FUSED_TOPK_MAX_ROWS} rows for the CUDA kernel, got {n_rows}"
        )
