"""Checkpoint files are read without running code: rank state as plain tensors read with
``weights_only=True``, and every folder checked against the manifest written last at save time."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reidscale.engine.checkpoint import (
    MANIFEST,
    check_plain_state,
    load_checkpoint,
    module_shapes,
    read_rank_file,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_manifest,
)


class FilesEngine:
    """The two DeepSpeed engine calls the checkpoint module makes, writing one pickle file per tag, and the
    engine's ``module`` (a tiny model, its shapes recorded in the manifest)."""

    def __init__(self, module: torch.nn.Module | None = None) -> None:
        self.module = module if module is not None else torch.nn.Linear(3, 2)

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool) -> None:
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"client_state": client_state, "weights": torch.arange(4.0)}, folder / "model_states.pt")

    def load_checkpoint(self, load_dir: str, tag: str, **_: Any) -> tuple[str, dict]:
        saved = torch.load(Path(load_dir) / tag / "model_states.pt", weights_only=False)  # as DeepSpeed does
        return str(Path(load_dir) / tag), saved["client_state"]


class Marker:
    """A crafted pickle: unpickling it creates ``path`` (the code a crafted checkpoint file would run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def saved_checkpoint(tmp_path: Path) -> Path:
    state = {"objective": {"running": torch.ones(3), "count": 2, "name": "toy"}}
    return save_checkpoint(FilesEngine(), tmp_path / "ckpt", 5, {"step": 5}, keep_last=2, rank_state=state)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.random(), np.random.normal(), torch.rand(1)  # leave a cached gaussian in numpy's state
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.normal(), torch.rand(2))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.normal(), torch.rand(2))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_plain_state_is_checked_before_it_is_written() -> None:
    check_plain_state({"a": [torch.zeros(1), 1, 2.0, "x", None, True, (3,)]})
    with pytest.raises(ValueError, match=r"state\['banks'\]\['rows'\] is a ndarray"):
        check_plain_state({"banks": {"rows": np.zeros(3)}})
    with pytest.raises(ValueError, match=r"has the key 3: checkpoint state keys must be strings"):
        check_plain_state({3: torch.zeros(1)})


def test_a_saved_checkpoint_has_a_manifest_and_loads(tmp_path: Path) -> None:
    folder = saved_checkpoint(tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["model_states.pt", "rank00000.pt"]
    client_state, rng, own = load_checkpoint(FilesEngine(), folder)
    assert client_state == {"step": 5} and own["objective"]["count"] == 2 and "torch" in rng


@pytest.mark.parametrize("change", ["truncate", "flip_a_byte", "extra_file", "no_manifest", "missing_file"])
def test_a_folder_that_differs_from_its_manifest_is_refused_before_loading(
    tmp_path: Path, change: str
) -> None:
    folder = saved_checkpoint(tmp_path)
    model = folder / "model_states.pt"
    data = model.read_bytes()
    if change == "truncate":
        model.write_bytes(data[:-10])
    elif change == "flip_a_byte":
        model.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif change == "extra_file":
        (folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"from another run")
    elif change == "no_manifest":
        (folder / MANIFEST).unlink()
    else:
        (folder / "rank00000.pt").unlink()
    with pytest.raises(ValueError, match=r"refusing to resume from .*step_00000005"):
        load_checkpoint(FilesEngine(), folder)


def test_a_crafted_pickle_on_resume_runs_nothing(tmp_path: Path) -> None:
    folder = saved_checkpoint(tmp_path)
    marker = tmp_path / "code_ran"
    with open(folder / "rank00000.pt", "wb") as handle:
        pickle.dump({"rng": Marker(marker), "state": {}}, handle, protocol=2)  # torch.save's protocol
    with pytest.raises(ValueError, match=r"its files are not the ones saved there \(rank00000.pt: \d+ bytes"):
        load_checkpoint(FilesEngine(), folder)
    write_manifest(folder)  # even with a manifest that matches, the rank file is read without running code
    with pytest.raises(ValueError, match=r"rank00000.pt is not a reidscale rank-state file"):
        read_rank_file(folder / "rank00000.pt")
    with pytest.raises(ValueError, match=r"rank00000.pt is not a reidscale rank-state file"):
        load_checkpoint(FilesEngine(), folder)
    assert not marker.exists()


def test_resuming_with_another_model_is_refused_naming_the_mismatch(tmp_path: Path) -> None:
    folder = saved_checkpoint(tmp_path)  # saved from Linear(3, 2): weight [2, 3], bias [2]
    with pytest.raises(ValueError) as raised:
        load_checkpoint(FilesEngine(torch.nn.Linear(4, 2)), folder)
    assert str(raised.value).splitlines() == [
        f"refusing to resume from {folder}: the model saved there is not the one this run builds (the model "
        "section or the method's heads changed since) (0 missing, 0 unexpected, 1 of another shape; the "
        "checkpoint has 2 entries, this run's model 2)",
        "  shape mismatch (1): weight (model [2, 4], saved [2, 3])",
    ]
    deeper = torch.nn.Sequential(torch.nn.Linear(3, 2))  # the same tensors under other names
    with pytest.raises(
        ValueError, match=r"missing \(2\): 0.weight, 0.bias\n  unexpected \(2\): bias, weight"
    ):
        load_checkpoint(FilesEngine(deeper), folder)
    client_state, _, _ = load_checkpoint(FilesEngine(torch.nn.Linear(3, 2)), folder)
    assert client_state == {"step": 5}


def test_module_shapes_reports_a_partitioned_parameter_by_its_full_shape() -> None:
    module = torch.nn.Linear(3, 2)
    module.weight.data = torch.empty(0)  # what ZeRO-3 leaves on a rank: an empty local tensor ...
    module.weight.ds_shape = torch.Size([2, 3])  # ... and the full shape beside it
    assert module_shapes(module) == {"weight": [2, 3], "bias": [2]}
