"""Where the CUDA toolkit and the operator sources are: shared by ``setup.py`` (install-time build) and
``reidscale.kernels.cuda`` (JIT build). Standard library only, so ``setup.py`` can load this file by path
before the package (or torch) is importable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path


def cuda_toolkit_root() -> str | None:
    """The CUDA toolkit root: CUDA_HOME, else the one nvcc really lives in, else /usr/local/cuda, or None.

    nvcc's own ``--dryrun`` report names its toolkit (``TOP=``), which sees through wrapper scripts such as
    /usr/local/bin/nvcc, where torch's guess from ``which nvcc`` (two folders up) is wrong.
    """
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        cmd = [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull]
        try:
            report = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            text = report.stdout + report.stderr
        except (OSError, subprocess.SubprocessError):
            text = ""
        for match in re.finditer(r"^#\$ TOP=(.+)$", text, flags=re.MULTILINE):
            top = Path(match.group(1).strip()).resolve()
            if (top / "bin" / "nvcc").is_file():
                return str(top)
    fallback = Path("/usr/local/cuda")
    return str(fallback.resolve()) if (fallback / "bin" / "nvcc").is_file() else None


def csrc_sources(csrc: Path) -> list[Path]:
    """Every operator source under ``csrc`` (``<op>/*.cpp`` then ``<op>/*.cu``), sorted."""
    return sorted(csrc.glob("*/*.cpp")) + sorted(csrc.glob("*/*.cu"))
