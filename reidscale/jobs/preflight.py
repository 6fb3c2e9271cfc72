"""Pre-flight checks of a training run: every problem that can be seen without building anything.

``check_before_training`` runs at the very start of ``reidscale.jobs.train.run_training``, before the data
is read, the crop cache decoded, a memory bank filled or the run folder created, and reports all problems
at once (one ValueError, one line each) instead of the first one after minutes of work. It reads the
method's own checks (``MethodSpec.preflight``: its data paths) and the common ones: ``model.weights``
exists when set, ``<run.output_dir>/<run.name>`` can be created or written, ``train.precision`` fp16 has a
GPU. It creates nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reidscale.methods.spec import MethodSpec


def unwritable_folder_problem(folder: Path, option: str) -> str | None:
    """Why ``folder`` could not be created or written (None = it could), without creating anything.

    Walks up to the nearest existing path: it must be a folder this process may write into (to create
    the rest), and an existing ``folder`` must be writable itself.
    """
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{option} cannot be created: {existing} is not a folder (wanted the folder {folder})"
    if not os.access(existing, os.W_OK | os.X_OK):
        action = "written" if existing == folder else "created"
        return f"{option} cannot be {action}: no write permission in {existing} (wanted the folder {folder})"
    return None


def common_problems(config: Any) -> list[str]:
    """The problems every training command shares: ``model.weights``, the run folder, ``train.precision``."""
    import torch  # here, so that importing the checks does not import torch

    problems = []
    weights = config.model.weights
    if weights is not None and not Path(weights).is_file():
        problems.append(f"model.weights is not a file: {weights}")
    run_dir = Path(config.run.output_dir) / config.run.name
    unwritable = unwritable_folder_problem(run_dir, "run.output_dir/run.name")
    if unwritable is not None:
        problems.append(unwritable)
    if config.train.precision == "fp16" and not torch.cuda.is_available():
        problems.append(
            "train.precision='fp16' needs a CUDA GPU (DeepSpeed refuses fp16 on CPU); use bf16 or fp32"
        )
    return problems


def preflight_problems(config: Any, spec: MethodSpec) -> list[str]:
    """All problems of ``config`` (the command's resolved root) for ``spec``'s method: its own, then the
    common ones; one line each, naming the option. Empty = nothing found."""
    return [*spec.preflight(config), *common_problems(config)]


def check_before_training(config: Any, spec: MethodSpec) -> None:
    """Raise one ValueError listing every problem ``preflight_problems`` finds (nothing when none)."""
    problems = preflight_problems(config, spec)
    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ValueError(f"{spec.command} cannot start, {count} in the config:\n{listed}")
