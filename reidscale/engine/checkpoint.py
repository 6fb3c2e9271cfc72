"""Atomic keep-last-K checkpoints: DeepSpeed save/load plus ``client_state`` and every rank's RNG.

Layout of ``<dir>``::

    latest                   the tag of the newest complete checkpoint (written atomically, last)
    step_00000006/           DeepSpeed's files (model, ZeRO partitions, client_state) +
                             rank00000.pt, rank00001.pt, … (each rank's own state: its RNG states and
                             whatever per-rank state the caller passes, e.g. an objective's
                             extra state when it differs between ranks)

A checkpoint is first written as ``.partial_<tag>/`` by all ranks; after a barrier rank 0 renames it to
``<tag>`` and rewrites ``latest``, so a crash mid-save leaves the previous checkpoint in force. Rank 0
then deletes all but the ``keep_last`` newest complete checkpoints (and leftover partial ones).
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from reidscale.utils.dist import get_rank
from reidscale.utils.io import atomic_write, atomic_write_text

LATEST = "latest"
PARTIAL_PREFIX = ".partial_"
TAG_PATTERN = re.compile(r"^step_(\d{8,})$")


def step_tag(step: int) -> str:
    """Checkpoint tag of optimizer step ``step`` (steps done so far)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"step_{step:08d}"


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch CPU and (if any) CUDA RNG states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank_file(checkpoint: Path, rank: int) -> Path:
    return checkpoint / f"rank{rank:05d}.pt"


def _barrier() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()


def complete_tags(directory: str | Path) -> list[str]:
    """Tags of the complete checkpoints in ``directory``, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    tags = [path.name for path in root.iterdir() if path.is_dir() and TAG_PATTERN.match(path.name)]
    return sorted(tags, key=lambda tag: int(TAG_PATTERN.match(tag).group(1)))  # type: ignore[union-attr]


def save_checkpoint(
    engine: Any,
    directory: str | Path,
    step: int,
    client_state: dict[str, Any],
    keep_last: int,
    rank_state: dict[str, Any] | None = None,
) -> Path:
    """Save on every rank (a collective); returns ``<directory>/<tag>``. RNG states are left unchanged.

    client_state: rank 0's, stored with the model by DeepSpeed; rank_state: this rank's own extras.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(directory)
    tag = step_tag(step)
    partial = PARTIAL_PREFIX + tag
    rank = get_rank()
    rng = rng_state()
    if rank == 0 and (root / partial).exists():  # left by a crash during an earlier save of this step
        shutil.rmtree(root / partial)
    _barrier()
    engine.save_checkpoint(str(root), tag=partial, client_state=client_state, save_latest=False)
    own = {"rng": rng, "state": rank_state or {}}
    atomic_write(_rank_file(root / partial, rank), lambda tmp: torch.save(own, tmp))
    set_rng_state(rng)
    _barrier()
    if rank == 0:
        final, replaced = root / tag, root / (PARTIAL_PREFIX + "replaced_" + tag)
        if final.exists():  # the same step saved again: swap the folders, then drop the old one
            final.rename(replaced)
        (root / partial).rename(final)
        atomic_write_text(root / LATEST, tag + "\n")
        _prune(root, keep_last)
    _barrier()
    return root / tag


def _prune(root: Path, keep_last: int) -> None:
    for tag in complete_tags(root)[:-keep_last]:
        shutil.rmtree(root / tag, ignore_errors=True)
    for path in root.glob(PARTIAL_PREFIX + "*"):
        shutil.rmtree(path, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path | None:
    """A checkpoint folder from ``path``: a tag folder itself, or a checkpoint dir (its ``latest``)."""
    path = Path(path)
    if TAG_PATTERN.match(path.name) and path.is_dir():
        return path
    latest = path / LATEST
    if latest.is_file():
        checkpoint = path / latest.read_text(encoding="utf-8").strip()
        if not checkpoint.is_dir():
            raise ValueError(f"{latest} names {checkpoint.name}, which does not exist")
        return checkpoint
    return None


def load_checkpoint(
    engine: Any, checkpoint: str | Path
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """Load weights and optimizer state into ``engine`` (a collective).

    Returns (rank 0's client_state, this rank's RNG state, this rank's rank_state); the last two are None
    when the checkpoint has no file for this rank (e.g. after a change of world size).
    """
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise ValueError(f"checkpoint folder {folder} does not exist")
    load_path, client_state = engine.load_checkpoint(
        str(folder.parent), tag=folder.name, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if load_path is None:
        raise ValueError(f"DeepSpeed found no checkpoint in {folder}")
    rank_path = _rank_file(folder, get_rank())
    if not rank_path.is_file():
        return dict(client_state or {}), None, None
    own = torch.load(rank_path, weights_only=False)
    return dict(client_state or {}), own["rng"], own["state"]
