"""Feature files: round trip through .pt and .npz, and every bad input named by field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reidscale.evaluation.features import FeatureFileError, FeatureSet, load_feature_file, save_feature_file


def make_fields(num_query: int = 5, num_gallery: int = 9, dim: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "query_feats": rng.normal(size=(num_query, dim)).astype(np.float32),
        "gallery_feats": rng.normal(size=(num_gallery, dim)).astype(np.float32),
        "query_pids": rng.integers(1, 4, num_query),
        "query_camids": rng.integers(0, 3, num_query),
        "gallery_pids": rng.integers(0, 4, num_gallery),
        "gallery_camids": rng.integers(0, 3, num_gallery),
    }


def write_npz(path: Path, fields: dict) -> Path:
    np.savez(path, **fields)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_round_trip_keeps_values_and_paths(tmp_path: Path, suffix: str) -> None:
    fields = make_fields()
    features = FeatureSet(
        **{k: torch.from_numpy(v) for k, v in fields.items()},
        query_paths=[f"q{i}.jpg" for i in range(5)],
        gallery_paths=[f"g{i}.jpg" for i in range(9)],
    )
    loaded = load_feature_file(save_feature_file(tmp_path / f"feats{suffix}", features))
    for name, value in fields.items():
        assert torch.equal(getattr(loaded, name), torch.from_numpy(value).to(getattr(loaded, name).dtype))
    assert loaded.query_feats.dtype == torch.float32 and loaded.query_pids.dtype == torch.int64
    assert loaded.query_paths == features.query_paths and loaded.gallery_paths == features.gallery_paths


def test_half_precision_features_are_upcast(tmp_path: Path) -> None:
    fields = {k: torch.from_numpy(v) for k, v in make_fields().items()}
    fields["gallery_feats"] = fields["gallery_feats"].half()
    path = tmp_path / "f.pt"
    torch.save(fields, path)
    loaded = load_feature_file(path)
    assert loaded.gallery_feats.dtype == torch.float32
    assert torch.equal(loaded.gallery_feats, fields["gallery_feats"].float())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.pop("gallery_camids"), r"lacks field\(s\) gallery_camids"),
        (
            lambda f: f.update(query_pids=f["query_pids"][:-1]),
            r"'query_pids' has 4 entries but 'query_feats' has 5",
        ),
        (lambda f: f.update(gallery_feats=np.zeros((0, 4), np.float32)), r"'gallery_feats' is empty"),
        (
            lambda f: f.update(query_feats=f["query_feats"].astype(np.int32)),
            r"'query_feats' must be a floating",
        ),
        (
            lambda f: f.update(gallery_pids=f["gallery_pids"].astype(np.float64)),
            r"'gallery_pids' must be an integer",
        ),
        (
            lambda f: f.update(query_feats=f["query_feats"][:, :3]),
            r"'query_feats' has dimension 3 but 'gallery_feats' has 4",
        ),
        (lambda f: f.update(query_camids=f["query_camids"][:, None]), r"'query_camids' must be 1-D"),
        (lambda f: f.update(gallery_feats=f["gallery_feats"][0]), r"'gallery_feats' must be 2-D"),
        (
            lambda f: f.update(query_paths=np.array(["a.jpg"])),
            r"'query_paths' has 1 entries but 'query_feats' has 5",
        ),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, mutate, message: str) -> None:
    fields = make_fields()
    mutate(fields)
    with pytest.raises(FeatureFileError, match=message):
        load_feature_file(write_npz(tmp_path / "bad.npz", fields))


def test_non_finite_features_name_field_and_row(tmp_path: Path) -> None:
    fields = make_fields()
    fields["gallery_feats"][6, 2] = np.nan
    fields["gallery_feats"][7, 0] = np.inf
    with pytest.raises(FeatureFileError, match=r"'gallery_feats' has 2 NaN/inf values \(first in row 6\)"):
        load_feature_file(write_npz(tmp_path / "nan.npz", fields))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(FeatureFileError, match="does not exist"):
        load_feature_file(tmp_path / "missing.pt")
    (tmp_path / "f.csv").write_text("1,2\n")
    with pytest.raises(FeatureFileError, match=r"expected a .pt or .npz file"):
        load_feature_file(tmp_path / "f.csv")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(FeatureFileError, match=r"junk.pt could not be read"):
        load_feature_file(tmp_path / "junk.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(FeatureFileError, match="must hold a dict"):
        load_feature_file(tmp_path / "list.pt")
