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


def _saved_backbone(path: Path, name: str, img_size: tuple[int, int] = (256, 128)) -> Path:
    import torch

    from reidscale.models import create_backbone

    torch.save(create_backbone(name, img_size=img_size).state_dict(), path)
    return path


def test_weights_of_another_backbone_are_listed_with_the_other_problems(tmp_path: Path) -> None:
    weights = _saved_backbone(tmp_path / "r34.pt", "resnet34")
    config = _pretrain(
        tmp_path,
        "--model.name=resnet18",
        f"--model.weights={weights}",
        f"--pretrain_data.path={tmp_path / 'x'}",
    )
    with pytest.raises(ValueError) as raised:
        run_training(config, method_spec("pretrain", "selective"))
    lines = str(raised.value).splitlines()
    assert lines[:3] == [
        "pretrain cannot start, 2 problems in the config:",
        f"  - pretrain_data.path does not exist: {tmp_path / 'x'}",
        # resnet34 has 8 more BasicBlocks (3-4-6-3 against 2-2-2-2), 12 entries each: 2 convs, 2 BNs of 5
        f"  - model.weights: {weights}: the weights do not fit backbone 'resnet18' (0 missing, 96 "
        "unexpected, 0 of another shape; the file has 216 entries after conversion, the model 120)",
    ]
    assert not (tmp_path / "runs").exists()


def test_corrupt_weights_are_listed(tmp_path: Path) -> None:
    weights = tmp_path / "cut.pt"
    weights.write_bytes(_saved_backbone(tmp_path / "whole.pt", "resnet18").read_bytes()[:5000])
    problems = preflight_problems(
        _pretrain(tmp_path, "--model.name=resnet18", f"--model.weights={weights}"),
        method_spec("pretrain", "selective"),
    )
    assert len(problems) == 1 and problems[0].startswith(f"model.weights: {weights}: not a readable")


@pytest.mark.parametrize(
    ("name", "layout", "saved_size", "fits"),
    [
        ("resnet18", "reidscale", (256, 128), True),
        ("vit_tiny", "reidscale", (256, 128), True),
        ("vit_tiny", "timm", (224, 224), True),  # ImageNet-style timm file: 14×14 positions → 16×8
        ("vit_tiny", "reidscale", (128, 64), False),  # reidscale's own file is loaded as saved
    ],
)
def test_the_meta_device_check_says_what_a_real_load_says(
    tmp_path: Path, name: str, layout: str, saved_size: tuple[int, int], fits: bool
) -> None:
    import torch

    from reidscale.models import create_backbone
    from reidscale.models.config import ModelConfig, backbone_from_config, weights_problem

    backbone = create_backbone(name, img_size=saved_size)
    weights = tmp_path / "w.pt"
    torch.save((backbone.model if layout == "timm" else backbone).state_dict(), weights)
    for config in (
        ModelConfig(name=name, img_size=[256, 128], weights=str(weights)),
        ModelConfig(name="vit_small" if name == "vit_tiny" else "resnet50", weights=str(weights)),
    ):
        problem = weights_problem(config)
        try:
            backbone_from_config(config)
            real = None
        except ValueError as err:
            real = str(err)
        assert problem == real
        assert (problem is None) == (fits and config.name == name)


def test_a_backbone_the_meta_device_cannot_build_is_checked_for_real(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import reidscale.models.config as model_config

    real = model_config.create_backbone
    built_on: list[str] = []

    def no_meta(name: str, **kwargs: Any) -> Any:
        built_on.append(str(torch.empty(0).device))
        if built_on[-1] == "meta":
            raise NotImplementedError("this layer cannot be built on the meta device")
        return real(name, **kwargs)

    monkeypatch.setattr(model_config, "create_backbone", no_meta)
    weights = _saved_backbone(tmp_path / "w.pt", "resnet18")
    assert model_config.weights_problem(model_config.ModelConfig("resnet18", weights=str(weights))) is None
    problem = model_config.weights_problem(model_config.ModelConfig("resnet34", weights=str(weights)))
    assert built_on == ["meta", "cpu", "meta", "cpu"]
    assert problem is not None and "the weights do not fit backbone 'resnet34'" in problem


@pytest.mark.parametrize(
    ("environment", "visible", "problem"),
    [
        ({"LOCAL_WORLD_SIZE": "4"}, 2, "this node runs 4 training processes, one GPU each, but 2 GPUs are"),
        (
            {"LOCAL_SIZE": "2", "LOCAL_RANK": "1"},
            1,
            "this node runs 2 training processes, one GPU each, but 1 GPU is",
        ),
        ({"LOCAL_RANK": "3"}, 2, "this node runs 4 training processes"),
        ({"LOCAL_WORLD_SIZE": "2"}, 2, None),
        ({}, 1, None),
    ],
)
def test_more_processes_than_gpus_on_a_node(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], visible: int, problem: str | None
) -> None:
    import torch

    from reidscale.jobs.preflight import gpu_problems

    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(visible)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    found = gpu_problems("fp32")
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(problem)
        assert (
            f"(CUDA_VISIBLE_DEVICES={','.join(str(i) for i in range(visible))}): launch at most" in found[0]
        )
    assert gpu_problems("fp16") == found  # fp16 is fine with a GPU
