"""Feature files: the query/gallery embeddings and labels that ``reidscale evaluate`` reads.

A feature file is a ``.pt`` (a dict saved with ``torch.save``) or an ``.npz`` holding

    query_feats    [Q, D] float      gallery_feats    [G, D] float
    query_pids     [Q]    int        gallery_pids     [G]    int
    query_camids   [Q]    int        gallery_camids   [G]    int
    query_paths    [Q]    str  (optional: image paths, for the rank-list visualisation)
    gallery_paths  [G]    str  (optional)

Every field is checked on load; an error names the file and the field and says what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reidscale.utils.io import atomic_write

FEATURE_FIELDS: tuple[str, ...] = (
    "query_feats",
    "gallery_feats",
    "query_pids",
    "query_camids",
    "gallery_pids",
    "gallery_camids",
)
PATH_FIELDS: tuple[str, ...] = ("query_paths", "gallery_paths")


class FeatureFileError(ValueError):
    """A feature file that is missing, unreadable or holds a field of the wrong shape, dtype or value."""


@dataclass
class FeatureSet:
    """Validated evaluation inputs (float32 features, int64 labels, on the CPU)."""

    query_feats: torch.Tensor  # [Q, D] float32
    gallery_feats: torch.Tensor  # [G, D] float32
    query_pids: torch.Tensor  # [Q] int64
    query_camids: torch.Tensor  # [Q] int64
    gallery_pids: torch.Tensor  # [G] int64
    gallery_camids: torch.Tensor  # [G] int64
    query_paths: list[str] | None = None
    gallery_paths: list[str] | None = None

    @property
    def num_query(self) -> int:
        return self.query_feats.shape[0]

    @property
    def num_gallery(self) -> int:
        return self.gallery_feats.shape[0]


def _read_raw(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FeatureFileError(f"feature file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".pt" or suffix == ".pth":
            raw = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                raw = {key: archive[key] for key in archive.files}
        else:
            raise FeatureFileError(f"feature file {path}: expected a .pt or .npz file, got suffix {suffix!r}")
    except FeatureFileError:
        raise
    except Exception as err:
        raise FeatureFileError(f"feature file {path} could not be read: {type(err).__name__}: {err}") from err
    if not isinstance(raw, dict):
        raise FeatureFileError(f"feature file {path} must hold a dict of fields, got {type(raw).__name__}")
    return raw


def _as_tensor(value: Any, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise FeatureFileError(f"{where} must be numeric, got numpy dtype {value.dtype}")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise FeatureFileError(f"{where} must be a tensor or array, got {type(value).__name__}")


def _check_feats(value: Any, where: str) -> torch.Tensor:
    feats = _as_tensor(value, where)
    if not feats.is_floating_point():
        raise FeatureFileError(f"{where} must be a floating-point [N, D] array, got dtype {feats.dtype}")
    if feats.dim() != 2:
        raise FeatureFileError(f"{where} must be 2-D [N, D], got shape {tuple(feats.shape)}")
    if feats.shape[0] == 0 or feats.shape[1] == 0:
        raise FeatureFileError(
            f"{where} is empty (shape {tuple(feats.shape)}); need at least one row and column"
        )
    feats = feats.float()
    bad = ~torch.isfinite(feats)
    if bad.any():
        row = int(bad.any(dim=1).nonzero()[0])
        raise FeatureFileError(f"{where} has {int(bad.sum())} NaN/inf values (first in row {row})")
    return feats.contiguous()


def _check_labels(value: Any, where: str, length: int, length_from: str) -> torch.Tensor:
    labels = _as_tensor(value, where)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise FeatureFileError(f"{where} must be an integer array, got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise FeatureFileError(f"{where} must be 1-D, got shape {tuple(labels.shape)}")
    if labels.shape[0] != length:
        raise FeatureFileError(f"{where} has {labels.shape[0]} entries but {length_from} has {length} rows")
    return labels.long().contiguous()


def _check_paths(value: Any, where: str, length: int, length_from: str) -> list[str]:
    items = value.tolist() if isinstance(value, np.ndarray) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, str) for p in items):
        raise FeatureFileError(f"{where} must be a list of strings")
    if len(items) != length:
        raise FeatureFileError(f"{where} has {len(items)} entries but {length_from} has {length} rows")
    return list(items)


def load_feature_file(path: str | Path) -> FeatureSet:
    """Read and validate a feature file (see the module docstring for the fields)."""
    path = Path(path)
    raw = _read_raw(path)
    missing = [name for name in FEATURE_FIELDS if name not in raw]
    if missing:
        raise FeatureFileError(
            f"feature file {path} lacks field(s) {', '.join(missing)}; expected {', '.join(FEATURE_FIELDS)}"
        )
    where = {name: f"{path}: field '{name}'" for name in (*FEATURE_FIELDS, *PATH_FIELDS)}
    query_feats = _check_feats(raw["query_feats"], where["query_feats"])
    gallery_feats = _check_feats(raw["gallery_feats"], where["gallery_feats"])
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise FeatureFileError(
            f"{path}: field 'query_feats' has dimension {query_feats.shape[1]} but 'gallery_feats' has "
            f"{gallery_feats.shape[1]}"
        )
    num_q, num_g = query_feats.shape[0], gallery_feats.shape[0]
    paths = {
        name: _check_paths(raw[name], where[name], n, f"'{name.replace('paths', 'feats')}'")
        for name, n in (("query_paths", num_q), ("gallery_paths", num_g))
        if name in raw
    }
    return FeatureSet(
        query_feats=query_feats,
        gallery_feats=gallery_feats,
        query_pids=_check_labels(raw["query_pids"], where["query_pids"], num_q, "'query_feats'"),
        query_camids=_check_labels(raw["query_camids"], where["query_camids"], num_q, "'query_feats'"),
        gallery_pids=_check_labels(raw["gallery_pids"], where["gallery_pids"], num_g, "'gallery_feats'"),
        gallery_camids=_check_labels(
            raw["gallery_camids"], where["gallery_camids"], num_g, "'gallery_feats'"
        ),
        query_paths=paths.get("query_paths"),
        gallery_paths=paths.get("gallery_paths"),
    )


def save_feature_file(path: str | Path, features: FeatureSet) -> Path:
    """Write a FeatureSet as ``.pt`` or ``.npz`` (by suffix), atomically."""
    path = Path(path)
    fields: dict[str, Any] = {name: getattr(features, name) for name in FEATURE_FIELDS}
    for name in PATH_FIELDS:
        if getattr(features, name) is not None:
            fields[name] = getattr(features, name)
    if path.suffix == ".npz":
        arrays = {
            k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=str))
            for k, v in fields.items()
        }

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        return atomic_write(path, write)
    if path.suffix not in (".pt", ".pth"):
        raise FeatureFileError(f"feature file {path}: expected a .pt or .npz suffix")
    return atomic_write(path, lambda tmp: torch.save(fields, tmp))
