"""Build script: pure Python by default, plus the CUDA ops under ``csrc/`` when a CUDA toolchain is present.

Environment flags:
  REIDSCALE_BUILD_CUDA=1   require the CUDA extension (fail if it cannot be built)
  REIDSCALE_BUILD_CUDA=0   never build it (pure-Python install; Triton/torch kernel backends still work)
  unset                    build it when ``csrc/`` holds sources, torch is importable and nvcc is found
  TORCH_CUDA_ARCH_LIST     target architectures, e.g. "8.0;9.0" (torch's own variable)

Each op lives in ``csrc/<op>/`` as an api ``.cpp`` (input checks, registration) and kernel ``.cu`` files;
all of them are compiled into one extension, ``reidscale._C``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"


def cuda_sources() -> list[str]:
    """Return the C++/CUDA sources of every op folder under csrc/, relative to the repository root."""
    found = sorted(CSRC.glob("*/*.cpp")) + sorted(CSRC.glob("*/*.cu"))
    return [str(p.relative_to(ROOT)) for p in found]


def want_cuda_build(sources: list[str]) -> bool:
    flag = os.environ.get("REIDSCALE_BUILD_CUDA", "")
    if flag == "0":
        return False
    if not sources:
        if flag == "1":
            raise RuntimeError("REIDSCALE_BUILD_CUDA=1 but csrc/ holds no .cpp/.cu sources")
        return False
    has_nvcc = bool(os.environ.get("CUDA_HOME")) or shutil.which("nvcc") is not None
    if flag == "1" and not has_nvcc:
        raise RuntimeError("REIDSCALE_BUILD_CUDA=1 but no nvcc on PATH and CUDA_HOME is unset")
    return has_nvcc


def extension_kwargs() -> dict:
    sources = cuda_sources()
    if not want_cuda_build(sources):
        return {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    ext = CUDAExtension(
        name="reidscale._C",
        sources=sources,
        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17"]},
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(**extension_kwargs())
