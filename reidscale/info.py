"""``reidscale info``: what this machine can run, and why not where it cannot.

The report has five parts (also the JSON keys): ``versions`` of python and the dependencies, ``gpus`` that
torch sees, kernel ``backends`` (cuda / triton / torch), ``kernels`` (the ``REIDSCALE_KERNELS`` request and
the backend each op uses for CUDA and CPU tensors) and optional ``components`` (deepspeed, DALI, faiss,
wandb, ...). Each backend and component is ``{"usable": bool, "detail": str}`` where ``detail`` says what
works or the reason it does not.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
from typing import Any

from reidscale.utils.provenance import installed_versions

Status = dict[str, Any]


def _status(usable: bool, detail: str) -> Status:
    return {"usable": usable, "detail": detail}


def _import(module: str) -> tuple[Any | None, str]:
    """Import ``module``; return (module, "") or (None, one-line reason)."""
    try:
        # Some packages (deepspeed) print banners on import; keep stdout clean for `info --json`.
        with contextlib.redirect_stdout(sys.stderr):
            return importlib.import_module(module), ""
    except (
        Exception
    ) as err:  # an optional dependency may fail in many ways (ImportError, OSError, RuntimeError)
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return None, f"import {module} failed: {type(err).__name__}: {text}"


def gpu_report() -> list[dict[str, Any]]:
    """One entry per CUDA device torch sees: index, name, memory (GiB), compute capability."""
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            {
                "index": index,
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
            }
        )
    return gpus


def _nvcc_version() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    release = [line for line in out.splitlines() if "release" in line]
    return release[0].split("release")[-1].strip() if release else out.strip()[:60]


def kernel_report() -> dict[str, Any]:
    """The kernel dispatch: the ``REIDSCALE_KERNELS`` request, each backend's status, each op's choice."""
    from reidscale.kernels.dispatch import dispatch_report

    return dispatch_report()


def _faiss_status() -> Status:
    faiss, why = _import("faiss")
    if faiss is None:
        return _status(False, why)
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    where = f"GPU index on {gpus} GPU(s)" if gpus > 0 else "CPU index (no GPU build or no GPU)"
    return _status(True, f"faiss {faiss.__version__}, {where}")


def _wandb_status() -> Status:
    wandb, why = _import("wandb")
    if wandb is None:
        return _status(False, why)
    if os.environ.get("WANDB_MODE"):
        mode = f"{os.environ['WANDB_MODE']} (WANDB_MODE)"
    elif os.environ.get("WANDB_API_KEY"):
        mode = "online (WANDB_API_KEY set)"
    else:
        mode = "offline (default; set WANDB_MODE or WANDB_API_KEY to go online)"
    return _status(True, f"wandb {wandb.__version__}, runs {mode}")


def _dali_status(has_gpu: bool) -> Status:
    dali, why = _import("nvidia.dali")
    if dali is None:
        return _status(False, why)
    where = (
        "GPU (mixed) decoding" if has_gpu else "CPU pipelines only (no GPU: VP8/VP9/MJPEG video, JPEG images)"
    )
    return _status(True, f"DALI {dali.__version__}, {where}")


def _module_status(module: str, what: str) -> Status:
    mod, why = _import(module)
    if mod is None:
        return _status(False, why)
    return _status(True, f"{module} {getattr(mod, '__version__', '?')}: {what}")


def _distributed_status(has_gpu: bool) -> Status:
    import torch.distributed as torch_dist

    if not torch_dist.is_available():
        return _status(False, "torch built without torch.distributed")
    backends = [
        name
        for name, ok in (("nccl", torch_dist.is_nccl_available()), ("gloo", torch_dist.is_gloo_available()))
        if ok
    ]
    usable = [b for b in backends if b != "nccl" or has_gpu]
    return _status(bool(usable), f"process-group backends: {', '.join(usable) or 'none'}")


def component_report(has_gpu: bool) -> dict[str, Status]:
    """Optional components and whether this machine can use them."""
    nvcc = _nvcc_version()
    return {
        "deepspeed": _module_status("deepspeed", "training engine (ZeRO)"),
        "dali": _dali_status(has_gpu),
        "faiss": _faiss_status(),
        "wandb": _wandb_status(),
        "accelerate": _module_status("accelerate", "launcher"),
        "timm": _module_status("timm", "backbone zoo"),
        "pyav": _module_status("av", "CPU video decoding for codecs DALI-CPU lacks"),
        "nvcc": _status(
            nvcc is not None, f"CUDA compiler {nvcc}" if nvcc else "nvcc not found (CUDA_HOME/PATH)"
        ),
        "distributed": _distributed_status(has_gpu),
    }


def collect_info() -> dict[str, Any]:
    """The whole report as a JSON-ready dict with keys versions, gpus, backends, components."""
    import torch

    versions = installed_versions()
    versions["cuda"] = torch.version.cuda
    gpus = gpu_report()
    has_gpu = bool(gpus)
    kernels = kernel_report()
    return {
        "versions": versions,
        "gpus": gpus,
        "backends": kernels.pop("backends", {}),
        "kernels": kernels,
        "components": component_report(has_gpu),
    }


def format_info(report: dict[str, Any]) -> str:
    """Human-readable rendering of ``collect_info()``."""
    lines = ["versions:"]
    lines += [f"  {name:<12} {version or 'not installed'}" for name, version in report["versions"].items()]
    lines.append("gpus:" + ("" if report["gpus"] else " none (CPU only)"))
    for gpu in report["gpus"]:
        lines.append(f"  [{gpu['index']}] {gpu['name']}  {gpu['memory_gib']} GiB  sm_{gpu['capability']}")
    for section in ("backends", "components"):
        lines.append(f"{section}:")
        for name, status in report[section].items():
            mark = "yes" if status["usable"] else "no "
            lines.append(f"  {name:<12} {mark}  {status['detail']}")
        if section == "backends":
            lines += _format_kernels(report["kernels"])
    return "\n".join(lines)


def _format_kernels(kernels: dict[str, Any]) -> list[str]:
    """One line per op: the backend that serves CUDA tensors and CPU tensors here."""
    if "error" in kernels:
        return [f"kernel ops: {kernels['error']}"]
    lines = [f"kernel ops (REIDSCALE_KERNELS={kernels['requested']}):"]
    for op, choice in kernels["ops"].items():
        on_gpu = choice["cuda_tensors"] or "n/a (no GPU)"
        order = " > ".join(choice["order"])
        lines.append(
            f"  {op:<22} cuda tensors: {on_gpu:<13} cpu tensors: {choice['cpu_tensors']:<7} ({order})"
        )
    return lines
