"""The pre-flight checks of a training run: every bad path reported at once, before anything is created."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from reidscale.config import load_config
from reidscale.jobs.preflight import check_before_training, preflight_problems, unwritable_folder_problem
from reidscale.jobs.roots import root_for
from reidscale.jobs.train import run_training
from reidscale.methods import method_spec


def _pretrain(tmp: Path, *overrides: str) -> Any:
    """A pretrain root whose paths all exist (data and evaluation folders in ``tmp``), then ``overrides``."""
    (tmp / "corpus").mkdir(exist_ok=True)
    (tmp / "market").mkdir(exist_ok=True)
    base = [
        f"--pretrain_data.path={tmp / 'corpus'}",
        f"--pretrain.eval_root={tmp / 'market'}",
        f"--run.output_dir={tmp / 'runs'}",
    ]
    return load_config(root_for("pretrain"), None, [*base, *overrides])


def test_a_sound_config_has_no_problems(tmp_path: Path) -> None:
    config = _pretrain(tmp_path)
    assert preflight_problems(config, method_spec("pretrain", "selective")) == []
    check_before_training(config, method_spec("pretrain", "selective"))
    assert not (tmp_path / "runs").exists()


def test_three_bad_paths_are_one_error_listing_all_and_nothing_is_created(tmp_path: Path) -> None:
    config = _pretrain(
        tmp_path,
        f"--pretrain_data.path={tmp_path / 'no_corpus'}",
        f"--pretrain.eval_root={tmp_path / 'no_market'}",
        f"--model.weights={tmp_path / 'no_weights.pt'}",
    )
    with pytest.raises(ValueError) as raised:
        run_training(config, method_spec("pretrain", "selective"))
    lines = str(raised.value).splitlines()
    assert lines == [
        "pretrain cannot start, 3 problems in the config:",
        f"  - pretrain_data.path does not exist: {tmp_path / 'no_corpus'}",
        f"  - pretrain.eval_root is not a folder: {tmp_path / 'no_market'} (pretrain.eval_dataset="
        "'market1501' is evaluated there; null turns it off)",
        f"  - model.weights is not a file: {tmp_path / 'no_weights.pt'}",
    ]
    assert not (tmp_path / "runs").exists()


def test_eval_root_is_not_needed_without_evaluation(tmp_path: Path) -> None:
    config = _pretrain(tmp_path, "--pretrain.eval_dataset=null", f"--pretrain.eval_root={tmp_path / 'none'}")
    assert preflight_problems(config, method_spec("pretrain", "selective")) == []


def test_finetune_dataset_root(tmp_path: Path) -> None:
    overrides = [f"--finetune.dataset_root={tmp_path / 'missing'}", f"--run.output_dir={tmp_path / 'runs'}"]
    config = load_config(root_for("finetune"), None, overrides)
    with pytest.raises(
        ValueError, match=r"1 problem in the config:\n  - finetune.dataset_root is not a folder"
    ):
        run_training(config, method_spec("finetune", "bot"))
    assert not (tmp_path / "runs").exists()


def test_run_folder_under_a_file_is_refused_without_creating_anything(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    config = _pretrain(tmp_path, f"--run.output_dir={tmp_path / 'file' / 'runs'}")
    assert preflight_problems(config, method_spec("pretrain", "selective")) == [
        f"run.output_dir/run.name cannot be created: {tmp_path / 'file'} is not a folder "
        f"(wanted the folder {tmp_path / 'file' / 'runs' / 'reidscale'})"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "file", "market"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_run_folder_without_write_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert "no write permission in" in str(unwritable_folder_problem(locked / "runs", "run.output_dir"))
        assert "cannot be written" in str(unwritable_folder_problem(locked, "run.output_dir"))
    finally:
        locked.chmod(0o700)
    assert unwritable_folder_problem(locked / "a" / "b", "run.output_dir") is None


def test_fp16_without_a_gpu_is_listed(tmp_path: Path) -> None:
    import torch

    config = _pretrain(tmp_path, "--train.precision=fp16")
    problems = preflight_problems(config, method_spec("pretrain", "selective"))
    assert problems == (
        []
        if torch.cuda.is_available()
        else ["train.precision='fp16' needs a CUDA GPU (DeepSpeed refuses fp16 on CPU); use bf16 or fp32"]
    )
