"""Where a result came from: git commit of the code, package versions, device, date."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]

#: distribution name on the package index → short name used in reports
TRACKED_DISTRIBUTIONS: dict[str, str] = {
    "torch": "torch",
    "torchvision": "torchvision",
    "triton": "triton",
    "deepspeed": "deepspeed",
    "nvidia-dali-cuda130": "dali",
    "accelerate": "accelerate",
    "wandb": "wandb",
    "faiss-cpu": "faiss",
    "faiss-gpu-cu12": "faiss",
    "timm": "timm",
    "av": "av",
    "numpy": "numpy",
    "ninja": "ninja",
}


def git_commit(short: bool = False) -> str:
    """Commit hash of the reidscale source tree (with ``-dirty`` when it has uncommitted changes).

    Returns ``"unknown"`` when the package is not running from a git checkout.
    """
    try:
        args = ["git", "-C", str(PACKAGE_ROOT), "rev-parse", "--short" if short else "--verify", "HEAD"]
        commit = subprocess.run(args, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(PACKAGE_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if status else commit


def package_version(distribution: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_versions() -> dict[str, str | None]:
    """Versions of python, reidscale and the tracked dependencies (None = not installed)."""
    from reidscale import __version__

    versions: dict[str, str | None] = {"python": platform.python_version(), "reidscale": __version__}
    for dist, short in TRACKED_DISTRIBUTIONS.items():
        found = package_version(dist)
        if found is not None or short not in versions:
            versions[short] = found
    return versions


def device_name() -> str:
    """Human-readable name of the compute device: the first CUDA GPU, else the CPU model and core count."""
    import os

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu} ({os.cpu_count()} cores)"


def utc_timestamp() -> str:
    """Current UTC time in ISO-8601 with seconds resolution, e.g. ``2026-11-21T18:49:00Z``."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
