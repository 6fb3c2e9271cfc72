"""One-time native builds, done before a run instead of inside the first step that needs them.

Two components compile native code the first time they are used and cache the result:

* DeepSpeed's shared-memory collective op (``deepspeed_shm_comm``): every ``deepspeed.initialize`` on a
  CPU machine loads it, and the first load compiles it into ``TORCH_EXTENSIONS_DIR`` (default
  ``~/.cache/torch_extensions``): about 35 s on two idle cores, minutes on a busy machine.
* the project's CUDA ops, when ``reidscale._C`` was not built at install: compiled with ninja on the
  first call on a GPU into ``REIDSCALE_CUDA_CACHE`` (see ``reidscale.kernels.cuda``).

``reidscale prebuild`` (and the test suite's set-up, before any test runs) does both once; later loads
find the cache and take about a second. Run it before launching many ranks on a fresh machine: ranks that
find an empty cache at the same time build one after another behind a lock file, inside their start-up.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

PrebuildStatus = Literal["ready", "skipped", "failed"]


@dataclass(frozen=True)
class PrebuildResult:
    """What one build did: ``ready`` (built now or found in the cache), ``skipped`` (not needed or not
    possible here; ``detail`` says why) or ``failed`` (``detail`` holds the error)."""

    name: str
    status: PrebuildStatus
    seconds: float
    detail: str

    def line(self) -> str:
        """One line for a terminal: ``<name>: <status> in <s> s (<detail>)``."""
        timing = f" in {self.seconds:.1f} s" if self.status != "skipped" else ""
        return f"{self.name}: {self.status}{timing} ({self.detail})"


def _timed(name: str, build: Callable[[], tuple[PrebuildStatus, str]]) -> PrebuildResult:
    start = time.perf_counter()
    try:
        status, detail = build()
    except Exception as exc:  # reported, not raised: the caller decides what a failed build means
        status, detail = "failed", f"{type(exc).__name__}: {exc}"
    return PrebuildResult(name, status, time.perf_counter() - start, detail)


def _deepspeed_shm_op() -> tuple[PrebuildStatus, str]:
    try:  # the module, not the name `torch` that deepspeed.comm also binds
        deepspeed_comm = importlib.import_module("deepspeed.comm.torch")
    except ImportError as exc:
        return "skipped", f"deepspeed is not installed ({exc})"
    build = getattr(deepspeed_comm, "build_shm_op", None)
    if build is None:
        return "skipped", "this DeepSpeed version has no shared-memory op to build"
    # DeepSpeed's own loader, exactly as deepspeed.initialize calls it: same op, same cache folder
    module = build()
    if module is None:
        return "skipped", "the shared-memory op is not used by this accelerator or cannot build here"
    from torch.utils.cpp_extension import _get_build_directory

    return "ready", f"cached in {_get_build_directory('deepspeed_shm_comm', verbose=False)}"


def _cuda_ops() -> tuple[PrebuildStatus, str]:
    import torch

    if not torch.cuda.is_available():
        return "skipped", "no CUDA device: the CUDA ops are only loaded on a GPU"
    from reidscale.kernels.cuda import cuda_available

    usable, reason = cuda_available()
    return ("ready" if usable else "failed"), reason


def prebuild_deepspeed_ops() -> PrebuildResult:
    """Build (or find cached) DeepSpeed's shared-memory collective op."""
    return _timed("deepspeed shared-memory op", _deepspeed_shm_op)


def prebuild_cuda_ops() -> PrebuildResult:
    """Load ``reidscale._C`` or JIT-build the CUDA ops (only with a CUDA device)."""
    return _timed("reidscale CUDA ops", _cuda_ops)


def prebuild_all() -> list[PrebuildResult]:
    """Every one-time build, in the order above."""
    return [prebuild_deepspeed_ops(), prebuild_cuda_ops()]
