"""Atomic keep-last-K checkpoints: DeepSpeed save/load plus ``client_state`` and every rank's RNG.

Layout of ``<dir>``::

    latest                   the tag of the newest complete checkpoint (written atomically, last)
    step_00000006/           DeepSpeed's files (model, ZeRO partitions, client_state) +
                             rank00000.pt, rank00001.pt, … (each rank's own state: its RNG states and
                             whatever per-rank state the caller passes, e.g. an objective's
                             extra state when it differs between ranks) +
                             manifest.json (every other file's name, size and SHA-256, and the
                             model's entry shapes; written last)

A checkpoint is first written as ``.partial_<tag>/`` by all ranks; after a barrier rank 0 writes the
manifest, renames the folder to ``<tag>`` and rewrites ``latest``, so a crash mid-save leaves the previous
checkpoint in force. Rank 0 then deletes all but the ``keep_last`` newest complete checkpoints (and leftover
partial ones).

Trust. The rank files hold tensors, numbers, strings and containers only (RNG states converted to tensors)
and are read with ``torch.load(weights_only=True)``: they cannot run code. DeepSpeed reads its own files
with pickle, so a resume first checks the folder against its manifest and refuses any file that is missing,
extra, truncated or changed (which also catches files mixed from two runs), and a model of other names or
shapes than the resuming run builds. A checkpoint folder is trusted as the code is: resume only from
folders your runs wrote.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from reidscale.models.weights import weights_mismatch
from reidscale.utils.dist import get_rank
from reidscale.utils.io import atomic_write, atomic_write_text, file_sha256

LATEST = "latest"
PARTIAL_PREFIX = ".partial_"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
TAG_PATTERN = re.compile(r"^step_(\d{8,})$")


def step_tag(step: int) -> str:
    """Checkpoint tag of optimizer step ``step`` (steps done so far)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"step_{step:08d}"


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch CPU and (if any) CUDA RNG states, as tensors, numbers and
    strings only (what ``torch.load(weights_only=True)`` reads back)."""
    version, internal, gauss_next = random.getstate()
    key, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "key": str(key),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    python, numpy_state = state["python"], state["numpy"]
    internal = tuple(int(value) for value in python["internal"].tolist())
    random.setstate((python["version"], internal, python["gauss_next"]))
    np.random.set_state(
        (
            numpy_state["key"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


#: what a rank file may hold: what ``torch.load(weights_only=True)`` reads without running code
_PLAIN_LEAVES = (torch.Tensor, str, int, float, bool, type(None))


def check_plain_state(value: Any, where: str = "state") -> None:
    """ValueError naming the first entry of ``value`` that is not a tensor, number, string, bool, None or a
    dict (string keys) / list / tuple of those: rank files must load with ``weights_only=True``."""
    if isinstance(value, _PLAIN_LEAVES):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has the key {key!r}: checkpoint state keys must be strings")
            check_plain_state(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_plain_state(item, f"{where}[{index}]")
        return
    raise ValueError(
        f"{where} is a {type(value).__name__}: checkpoint state holds tensors, numbers, strings, bools, None "
        "and dicts / lists / tuples of them only (it is read back without unpickling code)"
    )


def _listed_files(folder: Path) -> list[Path]:
    """Every file below ``folder`` except the manifest, sorted by relative path."""
    return sorted(
        (path for path in folder.rglob("*") if path.is_file() and path.name != MANIFEST),
        key=lambda path: path.relative_to(folder).as_posix(),
    )


def module_shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    """Name → shape of every entry of ``module``'s state_dict (a ZeRO-3 partitioned parameter reports its
    full ``ds_shape``, not the empty local shard)."""
    return {
        name: list(getattr(value, "ds_shape", value.shape))
        for name, value in module.state_dict(keep_vars=True).items()
    }


def write_manifest(folder: Path, model: dict[str, list[int]] | None = None) -> Path:
    """Write ``folder/manifest.json``: every other file's relative path, size and SHA-256, and the shapes of
    the model saved there (``module_shapes``; resume compares them first), atomically."""
    files = {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": file_sha256(path)}
        for path in _listed_files(folder)
    }
    content = {"format": MANIFEST_FORMAT, "files": files, "model": model}
    return atomic_write_text(folder / MANIFEST, json.dumps(content, indent=1, sort_keys=True) + "\n")


def check_model_fits(folder: Path, module: torch.nn.Module) -> None:
    """ValueError naming ``folder`` when the model recorded in its manifest is not ``module`` (names and
    shapes): a resume with another backbone, input size or head configuration than the run that saved it.
    Nothing to compare when the manifest records no model."""
    saved = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("model")
    if saved is None:
        return
    message = weights_mismatch(
        module_shapes(module),
        saved,
        f"refusing to resume from {folder}: the model saved there is not the one this run builds (the "
        "model section or the method's heads changed since)",
        sizes="the checkpoint has {found} entries, this run's model {expected}",
    )
    if message is not None:
        raise ValueError(message)


def manifest_problems(folder: Path) -> list[str]:
    """What differs between ``folder`` and its manifest (empty when every file is as saved)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return [f"{folder} has no {MANIFEST} (not written by this version of reidscale, or incomplete)"]
    try:
        listed = dict(json.loads(manifest_path.read_text(encoding="utf-8"))["files"])
    except (ValueError, KeyError, TypeError) as err:
        return [f"{manifest_path} is not a reidscale checkpoint manifest ({err})"]
    present = {path.relative_to(folder).as_posix(): path for path in _listed_files(folder)}
    problems = [f"missing: {name}" for name in sorted(set(listed) - set(present))]
    problems += [f"not in the manifest: {name}" for name in sorted(set(present) - set(listed))]
    for name in sorted(set(listed) & set(present)):
        size, saved = present[name].stat().st_size, listed[name]
        if size != saved.get("size"):
            problems.append(f"{name}: {size} bytes, the manifest says {saved.get('size')}")
        elif file_sha256(present[name]) != saved.get("sha256"):
            problems.append(f"{name}: its SHA-256 differs from the manifest's")
    return problems


def verify_checkpoint(folder: str | Path) -> None:
    """Check ``folder`` against its manifest before anything in it is loaded (rank 0 hashes; the verdict
    is shared, so this is a collective under a process group).

    Raises:
        ValueError: the folder's files differ from what was saved, listing the differences.
    """
    folder = Path(folder)
    problems = manifest_problems(folder) if get_rank() == 0 else []
    if torch_dist.is_available() and torch_dist.is_initialized():
        shared = [problems]
        torch_dist.broadcast_object_list(shared, src=0)
        problems = shared[0]
    if problems:
        listed = "; ".join(problems[:10]) + (f"; ... ({len(problems)} in all)" if len(problems) > 10 else "")
        raise ValueError(
            f"refusing to resume from {folder}: its files are not the ones saved there ({listed}). DeepSpeed "
            "reads a checkpoint with pickle, so only a folder that matches its manifest is loaded"
        )


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
    check_plain_state(own, "rank state")
    atomic_write(_rank_file(root / partial, rank), lambda tmp: torch.save(own, tmp))
    set_rng_state(rng)
    _barrier()
    if rank == 0:
        write_manifest(root / partial, module_shapes(engine.module))
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
    """Load weights and optimizer state into ``engine`` (a collective), after checking the folder against its
    manifest (``verify_checkpoint``) and the model saved there against ``engine.module``
    (``check_model_fits``).

    Returns (rank 0's client_state, this rank's RNG state, this rank's rank_state); the last two are None
    when the checkpoint has no file for this rank (e.g. after a change of world size).
    """
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise ValueError(f"checkpoint folder {folder} does not exist")
    verify_checkpoint(folder)
    check_model_fits(folder, engine.module)
    load_path, client_state = engine.load_checkpoint(
        str(folder.parent), tag=folder.name, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if load_path is None:
        raise ValueError(f"DeepSpeed found no checkpoint in {folder}")
    rank_path = _rank_file(folder, get_rank())
    if not rank_path.is_file():
        return dict(client_state or {}), None, None
    own = read_rank_file(rank_path)
    return dict(client_state or {}), own["rng"], own["state"]


def read_rank_file(path: Path) -> dict[str, Any]:
    """A rank file's ``{"rng", "state"}``, read with ``weights_only=True`` (nothing in it can run).

    Raises:
        ValueError: the file holds anything but plain state, naming the file.
    """
    try:
        own = torch.load(path, weights_only=True)
    except Exception as err:  # the unpickler refuses any global it does not allow
        raise ValueError(
            f"{path} is not a reidscale rank-state file (read without running code): {err}"
        ) from None
    if not isinstance(own, dict) or set(own) != {"rng", "state"}:
        raise ValueError(f"{path} is not a reidscale rank-state file: expected keys 'rng' and 'state'")
    return own
