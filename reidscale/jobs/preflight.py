"""Pre-flight checks of a training run: every problem that can be seen without building anything.

``check_before_training`` runs at the very start of ``reidscale.jobs.train.run_training``, before the data
is read, the crop cache decoded, a memory bank filled or the run folder created, and reports all problems
at once (one ValueError, one line each) instead of the first one after minutes of work. It reads the
method's own checks (``MethodSpec.preflight``: its data paths) and the common ones: ``model.weights``
exists and fits the backbone (checked on the meta device), ``<run.output_dir>/<run.name>`` can be created or
written, the node has a GPU for each of its processes and for ``train.precision`` fp16. It creates nothing.
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


def gpu_problems(precision: str) -> list[str]:
    """What the GPUs of this node cannot serve: ``train.precision`` fp16 without a GPU; more processes on
    the node (the launcher's LOCAL_WORLD_SIZE / LOCAL_SIZE, or this process's LOCAL_RANK + 1) than GPUs
    visible to them, each process taking the GPU of its local rank."""
    import torch  # here, so that importing the checks does not import torch

    from reidscale.utils.dist import get_local_rank, get_local_world_size

    if not torch.cuda.is_available():
        fp16 = "train.precision='fp16' needs a CUDA GPU (DeepSpeed refuses fp16 on CPU); use bf16 or fp32"
        return [fp16] if precision == "fp16" else []
    visible = torch.cuda.device_count()
    processes = max(get_local_world_size(), get_local_rank() + 1)
    if processes <= visible:
        return []
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    which = f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else ""
    return [
        f"this node runs {processes} training processes, one GPU each, but {visible} GPU"
        f"{'s are' if visible != 1 else ' is'} visible{which}: launch at most {visible} per node "
        f"(deepspeed --num_gpus {visible}, torchrun --nproc_per_node {visible})"
    ]


def common_problems(config: Any) -> list[str]:
    """The problems every training command shares: ``model.weights`` (a file whose weights fit the
    backbone), the run folder, the GPUs (``gpu_problems``)."""
    from reidscale.models.config import weights_problem

    problems = []
    weights = config.model.weights
    if weights is not None and not Path(weights).is_file():
        problems.append(f"model.weights is not a file: {weights}")
    elif weights is not None:
        problem = weights_problem(config.model)
        if problem is not None:
            problems.append(problem)
    run_dir = Path(config.run.output_dir) / config.run.name
    unwritable = unwritable_folder_problem(run_dir, "run.output_dir/run.name")
    if unwritable is not None:
        problems.append(unwritable)
    return [*problems, *gpu_problems(config.train.precision)]


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
