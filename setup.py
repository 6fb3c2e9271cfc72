"""Build script: pure Python by default, plus the CUDA ops under ``csrc/`` when a CUDA toolchain is present.

Environment flags:
  REIDSCALE_BUILD_CUDA=1   require the CUDA extension (fail if it cannot be built)
  REIDSCALE_BUILD_CUDA=0   never build it (pure-Python install; Triton/torch kernel backends still work)
  unset                    build it when ``csrc/`` holds sources, torch is importable and nvcc is found
  CUDA_HOME                the CUDA toolkit root; when unset it is derived from nvcc's own ``--dryrun`` report
                           (``TOP=``), which sees through wrapper scripts such as /usr/local/bin/nvcc, else
                           /usr/local/cuda (torch's guess from ``which nvcc`` is wrong for wrappers)
  TORCH_CUDA_ARCH_LIST     target architectures, e.g. "8.0;9.0" (torch's own variable); when unset and no GPU
                           is visible it defaults to DEFAULT_CUDA_ARCHS (with a GPU torch targets that GPU)

Each op lives in ``csrc/<op>/`` as an api ``.cpp`` (input checks, registration) and kernel ``.cu`` files;
all of them are compiled into one extension, ``reidscale._C``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"
#: targets when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible: A100 (sm_80) and H100/H200 (sm_90). The
#: whole editable install with the extension takes about 1 minute on 2 cores with one target or both (the
#: host C++ compile dominates); the sm_90 PTX is embedded too, so newer GPUs JIT it at load time
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _load_toolkit_helpers():
    """reidscale/utils/cuda_toolkit.py, loaded by path (stdlib only; the package is not importable yet)."""
    spec = importlib.util.spec_from_file_location(
        "_cuda_toolkit", ROOT / "reidscale" / "utils" / "cuda_toolkit.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TOOLKIT = _load_toolkit_helpers()
cuda_toolkit_root = _TOOLKIT.cuda_toolkit_root


def cuda_sources() -> list[str]:
    """Return the C++/CUDA sources of every op folder under csrc/, relative to the repository root."""
    return [str(p.relative_to(ROOT)) for p in _TOOLKIT.csrc_sources(CSRC)]


def want_cuda_build(sources: list[str]) -> bool:
    flag = os.environ.get("REIDSCALE_BUILD_CUDA", "")
    if flag == "0":
        return False
    if not sources:
        if flag == "1":
            raise RuntimeError("REIDSCALE_BUILD_CUDA=1 but csrc/ holds no .cpp/.cu sources")
        return False
    has_nvcc = cuda_toolkit_root() is not None
    if flag == "1" and not has_nvcc:
        raise RuntimeError("REIDSCALE_BUILD_CUDA=1 but no CUDA toolkit (CUDA_HOME unset, no nvcc on PATH)")
    return has_nvcc


def configure_cuda_env() -> None:
    """Export CUDA_HOME and a default TORCH_CUDA_ARCH_LIST before torch.utils.cpp_extension reads them."""
    root = cuda_toolkit_root()
    if root is not None:
        os.environ["CUDA_HOME"] = root
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        import torch

        if not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS


def extension_kwargs() -> dict:
    sources = cuda_sources()
    if not want_cuda_build(sources):
        return {}
    configure_cuda_env()
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    ext = CUDAExtension(
        name="reidscale._C",
        sources=sources,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},  # torch adds its -std (c++20)
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(**extension_kwargs())
